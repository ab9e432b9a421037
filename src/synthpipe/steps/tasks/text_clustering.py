"""``TextClustering``: a label for each cluster of texts, given to every row of the cluster.

Follows the cluster-labelling method of Hugging Face's text-clustering project
(github.com/huggingface/text-clustering, 2024; texts embedded, projected and clustered
upstream, then an LLM names each cluster from a sample of its texts), with the zero-shot
annotation prompt of ``TextClassification`` (Gilardi et al., 2023, arXiv:2303.15056).
"""

from __future__ import annotations

import json
import random
from typing import Any, ClassVar

from pydantic import Field, field_validator

from synthpipe.models.base import ChatType, GenerateOutput, InvalidStructuredOutput
from synthpipe.models.cache import generate_cached
from synthpipe.steps.base import GlobalStep, RuntimeParameter, StepInput, StepKind, StepResult
from synthpipe.steps.clustering._vectors import vectors
from synthpipe.steps.clustering.figure import FIGURE_ARTIFACT, FIGURE_FILE, draw_clusters, missing_matplotlib
from synthpipe.steps.tasks.base import METADATA_COLUMN, IncompleteAnswer
from synthpipe.steps.tasks.text_classification import TextClassification

_CONTEXT = ("The texts below are a sample from one cluster of similar texts. Give the cluster a short, "
            "specific label that says what its texts have in common.")


class TextClustering(TextClassification, GlobalStep):
    """A global task: it sees every row at once, groups them by ``cluster_label`` (from an
    upstream clustering step; ``projection`` is accepted and not needed), sends up to
    ``samples_per_cluster`` texts of each cluster in one request, and writes the labels into
    ``summary_label`` of every row of that cluster, JSON-encoded as distilabel does (``'"fruit"'``
    when ``n == 1``, ``'["fruit", "food"]'`` else), so the column has one type.
    Rows of the noise cluster (``-1``) get ``default_label`` without a request.

    The engine keeps no failed rows for a global step (its one batch succeeds or fails), so a
    cluster whose answer cannot be used fails the step's batch with the original error
    (``UnparsableAnswer`` naming the cluster, raw text kept) and the run stops, keeping what
    finished; the bad answer is not cached, so ``retries=N`` on the step asks again. Never a
    silent ``None`` label.

    ``savefig`` (default True, as distilabel's) also draws the clusters: each row at the first
    two numbers of its ``projection``, each cluster named by its label, saved as the artifact
    "Text clusters" in ``<run dir>/artifacts/<step name>/Text clusters/figure_clustering.png``
    (``distiset.artifacts_path``). It needs matplotlib (the ``clustering`` extra), checked when
    the step is built or the parameter set, before any work; rows without a ``projection``
    column get their labels and no figure (a warning says so).
    """

    step_kind: ClassVar[StepKind] = "global"

    savefig: RuntimeParameter[bool] = Field(default=True, validate_default=True)
    samples_per_cluster: int = Field(default=10, ge=1)
    context: str = _CONTEXT
    query_title: str = "Texts"

    @field_validator("savefig")
    @classmethod
    def _figure_needs_matplotlib(cls, value: bool | None) -> bool | None:
        why = missing_matplotlib(cls.__name__) if value else None
        if why:
            raise ValueError(why)  # pydantic's error: said when the step is built or the parameter set
        return value

    @property
    def inputs(self) -> dict[str, bool]:  # type: ignore[override]
        return {"text": True, "cluster_label": True, "projection": False}

    @property
    def task_outputs(self) -> list[str]:
        return ["summary_label"]

    def _cluster_prompt(self, texts: list[str]) -> ChatType:
        return self._prompt("\n".join(f"- {' '.join(str(t).split())}" for t in texts))

    async def aprocess(self, inputs: StepInput) -> StepResult:  # type: ignore[override]
        rows = list(inputs)
        clusters: dict[Any, list[int]] = {}
        for index, row in enumerate(rows):
            label, text = row.get("cluster_label"), row.get("text")
            if isinstance(label, bool) or not isinstance(label, int) or not isinstance(text, str):
                raise ValueError(f"step '{self.name}': row {index} needs a str 'text' and an int 'cluster_label', "
                                 f"got {text!r}, {label!r}")
            clusters.setdefault(label, []).append(index)
        points = self._figure_points(rows)
        named = sorted(c for c in clusters if c != -1)
        chats = []
        for cluster in named:
            members = clusters[cluster]
            sample = random.Random(cluster).sample(members, min(self.samples_per_cluster, len(members)))
            chats.append(self._cluster_prompt([rows[i]["text"] for i in sorted(sample)]))

        def accept(i: int, answer: GenerateOutput) -> dict[str, Any]:
            generations = list(answer.get("generations") or [])
            text = generations[0] if generations else None
            if text is None:
                raise IncompleteAnswer(f"{self.llm.model_name} returned no text for cluster {named[i]}")
            structured = self.llm.structured_output
            if structured is not None:
                try:
                    structured.validate_text(text)
                except InvalidStructuredOutput as exc:
                    raise InvalidStructuredOutput(f"{exc} (cluster {named[i]})", exc.raw_output) from None
            meta: dict[str, Any] = {}
            if self.add_raw_input:
                meta[f"raw_input_{self.name}"] = chats[i]
            if self.add_raw_output:
                meta[f"raw_output_{self.name}"] = text
            return {"summary_label": json.dumps(self.parse_labels(text)), "meta": meta}

        results = await generate_cached(self.llm, chats, 1, accept, read=self.use_cache,
                                        **dict(self.llm.generation_kwargs))
        labels: dict[Any, Any] = {}
        default = self._defaults[0] if self.n == 1 and self._defaults else list(self._defaults)
        if -1 in clusters:
            labels[-1] = {"summary_label": json.dumps(default), "meta": {}}
        for cluster, result in zip(named, results, strict=True):
            if isinstance(result, BaseException):
                result.add_note(f"while labelling cluster {cluster} ({len(clusters[cluster])} rows)")
                raise result
            labels[cluster] = result
        if points is not None:
            self._save_figure(points, [row["cluster_label"] for row in rows], labels)
        out = []
        for row in rows:
            found = labels[row["cluster_label"]]
            meta = {**dict(row.get(METADATA_COLUMN) or {}), **found["meta"]}
            out.append({**row, "summary_label": found["summary_label"], "model_name": self.llm.model_name,
                        METADATA_COLUMN: meta})
        return StepResult(out, [], list(range(len(rows))))

    def _figure_points(self, rows: list[dict[str, Any]]) -> Any:
        """The 2-D points to draw (checked before any request), or None when no figure is made."""
        if not self.savefig or not rows:
            return None
        if all(row.get("projection") is None for row in rows):
            self.logger.warning("step '%s': savefig=True, but the rows have no 'projection' column (from UMAP): "
                                "no figure is made", self.name)
            return None
        return vectors(str(self.name), rows, "projection", at_least=2)[:, :2]

    def _save_figure(self, points: Any, clusters: list[int], labels: dict[Any, dict[str, Any]]) -> None:
        names = {}
        for cluster, found in labels.items():
            label = json.loads(found["summary_label"])
            names[cluster] = ", ".join(map(str, label)) if isinstance(label, list) else str(label)
        self.save_artifact(FIGURE_ARTIFACT, lambda folder: draw_clusters(points, clusters, names, folder / FIGURE_FILE),
                           {"type": "image", "library": "matplotlib"})
