"""``DataSampler``: rows made of random samples of a small list of examples (few-shot)."""

from __future__ import annotations

import random
from typing import Any, Optional

from pydantic import Field, model_validator

from synthpipe.steps.base import GeneratorStep, GeneratorStepOutput


class DataSampler(GeneratorStep):
    """Yields ``samples`` rows; each holds, per column of ``data``, the values of ``size``
    examples drawn without replacement. With ``seed`` the draw is reproducible, and a
    resumed run draws the same rows as the first (each batch's draw depends only on where it
    starts)."""

    data: list[dict[str, Any]] = Field(min_length=1)
    size: int = Field(default=2, ge=1)
    samples: int = Field(default=100, ge=0)
    seed: Optional[int] = None

    @model_validator(mode="after")
    def _fits(self) -> DataSampler:
        if self.size > len(self.data):
            raise ValueError(f"size {self.size} is more than the {len(self.data)} examples in data")
        return self

    @property
    def outputs(self) -> list[str]:
        columns: dict[str, None] = {}
        for row in self.data:
            columns.update(dict.fromkeys(row))
        return list(columns)

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        columns = self.outputs
        if offset >= self.samples:
            yield [], True
            return
        base = self.seed if self.seed is not None else random.randrange(2**32)
        for start in range(offset, self.samples, self.batch_size):
            rng = random.Random(f"{base}:{start}")
            end = min(start + self.batch_size, self.samples)
            batch = []
            for _ in range(start, end):
                picked = rng.sample(self.data, self.size)
                batch.append({c: [row.get(c) for row in picked] for c in columns})
            yield batch, end >= self.samples
