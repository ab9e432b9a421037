"""``DBSCAN``: a cluster number for each row from its projection, noise marked ``-1``.

DBSCAN (Ester, Kriegel, Sander and Xu, KDD 1996) through scikit-learn: clusters are dense
regions, grown from core points with ``min_samples`` neighbours within ``eps``; the number of
clusters is found, not given. A global step: density is a property of the whole dataset.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from synthpipe.steps.base import GlobalStep, RuntimeParameter, StepInput, StepOutput
from synthpipe.steps.clustering._vectors import keep_fitted_model, vectors

MODEL_ARTIFACT = "DBSCAN_model"
MODEL_FILE = "DBSCAN.joblib"


def _import_dbscan(step: str) -> Any:
    try:
        from sklearn.cluster import DBSCAN as _DBSCAN
    except ImportError as exc:
        raise ImportError(f"step '{step}' (DBSCAN) needs the 'scikit-learn' package: pip install "
                          f"'synthpipe[clustering]' ({exc})") from exc
    return _DBSCAN


class DBSCAN(GlobalStep):
    """Clusters the ``projection`` column of all rows (usually ``UMAP``'s) and writes the
    cluster of each row in ``cluster_label`` (an int; ``-1``: noise, in no cluster).
    ``eps`` is the neighbourhood radius, ``min_samples`` the neighbours (the point included)
    a core point needs, ``metric`` any of ``sklearn.metrics.pairwise_distances``'. The fitted
    model is kept as the artifact ``DBSCAN_model`` (``DBSCAN.joblib``) in
    ``<run dir>/artifacts/<step name>/DBSCAN_model/``.
    """

    eps: RuntimeParameter[float] = Field(default=0.3, gt=0)
    min_samples: RuntimeParameter[int] = Field(default=30, ge=1)
    metric: RuntimeParameter[str] = "euclidean"
    n_jobs: RuntimeParameter[int] = 8

    @property
    def inputs(self) -> list[str]:
        return ["projection"]

    @property
    def outputs(self) -> list[str]:
        return ["cluster_label"]

    def load(self) -> None:
        _import_dbscan(str(self.name))  # a missing package is said before any row arrives

    def process(self, inputs: StepInput) -> StepOutput:
        data = vectors(str(self.name), inputs, "projection")
        if not inputs:
            yield inputs
            return
        clusterer = _import_dbscan(str(self.name))(eps=self.eps, min_samples=self.min_samples, metric=self.metric,
                                                   n_jobs=self.n_jobs)
        from joblib import parallel_config

        # Workers are daemonic processes, which cannot start joblib's process pool (it would fall
        # back to one job with a warning): threads carry n_jobs instead.
        with parallel_config(backend="threading", n_jobs=self.n_jobs):
            labels = clusterer.fit(data).labels_
        for row, label in zip(inputs, labels, strict=True):
            row["cluster_label"] = int(label)
        found = len(set(labels.tolist()) - {-1})
        self.logger.info("DBSCAN found %d cluster(s); %d of %d rows are noise", found, int((labels == -1).sum()),
                         len(inputs))
        keep_fitted_model(self, MODEL_ARTIFACT, MODEL_FILE, clusterer,
                          {"eps": self.eps, "min_samples": self.min_samples, "metric": self.metric})
        yield inputs
