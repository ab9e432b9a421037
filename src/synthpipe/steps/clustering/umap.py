"""``UMAP``: embeddings projected to a few dimensions, for clustering and for plotting.

UMAP (McInnes, Healy and Melville, 2018, arXiv:1802.03426) through ``umap-learn``. A global
step because the projection is fitted on every row at once: one fit, one coordinate system.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from synthpipe.steps.base import GlobalStep, RuntimeParameter, StepInput, StepOutput
from synthpipe.steps.clustering._vectors import keep_fitted_model, vectors

MODEL_ARTIFACT = "UMAP_model"
MODEL_FILE = "UMAP.joblib"


def _import_umap(step: str) -> Any:
    try:
        from umap import UMAP as _UMAP
    except ImportError as exc:
        raise ImportError(f"step '{step}' (UMAP) needs the 'umap-learn' package: pip install 'synthpipe[clustering]'"
                          f" ({exc})") from exc
    return _UMAP


class UMAP(GlobalStep):
    """Fits UMAP on the ``embedding`` column of all rows and writes each row's coordinates in
    ``projection`` (``n_components`` floats). ``metric`` is any metric umap-learn knows
    ("euclidean", "cosine"...); ``n_jobs`` threads at most, no more than the machine has;
    ``random_state`` makes the fit reproducible (umap-learn then runs on one thread). The
    fitted model is kept as the artifact ``UMAP_model`` (``UMAP.joblib``, load it with
    ``joblib.load``) in ``<run dir>/artifacts/<step name>/UMAP_model/``, so new texts can be
    projected the same way.
    """

    n_components: RuntimeParameter[int] = Field(default=2, ge=1)
    metric: RuntimeParameter[str] = "euclidean"
    n_jobs: RuntimeParameter[int] = 8
    random_state: RuntimeParameter[int] = None

    @property
    def inputs(self) -> list[str]:
        return ["embedding"]

    @property
    def outputs(self) -> list[str]:
        return ["projection"]

    def load(self) -> None:
        _import_umap(str(self.name))  # a missing package is said before any row arrives

    def process(self, inputs: StepInput) -> StepOutput:
        data = vectors(str(self.name), inputs, "embedding")
        if not inputs:
            yield inputs
            return
        components = self.n_components or 2
        if len(inputs) < components + 2:  # umap-learn's spectral start fails obscurely below that
            raise ValueError(f"step '{self.name}': UMAP needs at least {components + 2} rows to fit "
                             f"n_components={components}; it got {len(inputs)}")
        mapper = _import_umap(str(self.name))(
            n_components=components, metric=self.metric, n_jobs=self._threads(), random_state=self.random_state)
        self.logger.info("fitting UMAP on %d rows of %d dimensions", *data.shape)
        projection = mapper.fit_transform(data)
        for row, point in zip(inputs, projection, strict=True):
            row["projection"] = [float(x) for x in point]
        keep_fitted_model(self, MODEL_ARTIFACT, MODEL_FILE, mapper,
                          {"n_components": self.n_components, "metric": self.metric})
        yield inputs

    def _threads(self) -> int:
        """``n_jobs`` within what numba can run here: umap-learn refuses more threads than
        numba has (its default, 8, fails on a smaller machine); -1 or None is all of them."""
        import numba

        if not self.n_jobs or self.n_jobs < 0:
            return -1
        return min(self.n_jobs, numba.config.NUMBA_NUM_THREADS)
