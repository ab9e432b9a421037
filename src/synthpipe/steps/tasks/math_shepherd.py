"""Math-Shepherd: step-by-step solutions, labelled per step by whether completions from that
step still reach the right answer, and formatted for training a process reward model.

Paper: "Math-Shepherd: Verify and Reinforce LLMs Step-by-step without Human Annotations",
Peiyi Wang, Lei Li, Zhihong Shao, R. X. Xu, Damai Dai, Yifei Li, Deli Chen, Y. Wu, Zhifang Sui,
2024, arXiv:2312.08935. A step's label uses the paper's hard estimation: ``+`` when at least
one of ``N`` completions started after it ends with the golden answer, ``-`` otherwise.

A solution is a list of strings, ``"Step i: ..."`` for each step and ``"The answer is: X"``
last. Several solutions in one answer are asked for as structured output
(``{"solutions": [{"solution": ...}]}``) where the backend supports it, else separated by
a line ``---``; an answer without the number of solutions asked for, or a solution without
steps, fails its row with the raw text kept.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, Optional

from pydantic import Field, PositiveInt, field_validator

from synthpipe.models.base import ChatType, GenerateOutput
from synthpipe.models.cache import generate_cached
from synthpipe.steps.base import RowFailure, Step, StepInput, StepOutput, StepResult
from synthpipe.steps.tasks.base import METADATA_COLUMN, IncompleteAnswer, Task, UnparsableAnswer
from synthpipe.steps.tasks.json_answers import loads_answer
from synthpipe.steps.tasks.templates import render_template
from synthpipe.worker_context import current_row_start

SYSTEM_PROMPT = (
    "You teach mathematics by solving word problems one small step at a time. Each step follows from "
    "the ones before it, explains its reasoning in plain words and shows every calculation. Number the "
    "steps 'Step 1:', 'Step 2:' and so on, one per line, and finish with a line 'The answer is: <result>'."
    "{% if extra_rules %}\n\n{{ extra_rules }}{% endif %}{% if few_shots %}\n\n{{ few_shots }}{% endif %}")
RULES_GSM8K = ("Write each calculation inside double angle brackets with its result after them, "
               "for example <<4*12=48>>48, using + - * / for the operations.")
FEW_SHOTS_GSM8K = (
    "Example problem: A baker makes 3 trays of 12 rolls and sells all but 5. How many rolls does she sell?\n"
    "Step 1: She makes 3 * 12 = <<3*12=36>>36 rolls.\n"
    "Step 2: She sells 36 - 5 = <<36-5=31>>31 rolls.\n"
    "The answer is: 31")
SOLVE_TEMPLATE = (
    "{% if M %}Write {{ M }} different solutions to this problem{% if not structured %}, separated by a "
    "line holding only ---{% endif %}.{% else %}Solve this problem.{% endif %}\n\n{{ instruction }}")
COMPLETE_TEMPLATE = (
    "Here is a problem and the first steps of a solution. Continue the solution from the next step "
    "to the final answer{% if N > 1 %}, in {{ N }} different ways{% if not structured %}, separated by a line "
    "holding only ---{% endif %}{% endif %}.\n\nProblem: {{ instruction }}\n\n{{ steps }}")

_STEPS = re.compile(r"Step \d+:.*?(?=Step \d+:|The answer is:|$)|The answer is:.*", re.S)
_ANSWER = re.compile(r"The answer is:\s*(.*)", re.S)


def split_solution_steps(text: str) -> list[str]:
    """The ``Step i:`` parts and the ``The answer is:`` line of a solution's text."""
    return [part.strip() for part in _STEPS.findall(text) if part.strip()]


def final_answer(steps: list[str]) -> Optional[str]:
    """The answer of a solution's last part, normalised (no trailing period, spaces or label)."""
    if not steps:
        return None
    found = _ANSWER.search(steps[-1])
    return found.group(1).strip().rstrip(".").strip() if found else None


def _solutions_schema() -> dict[str, Any]:
    item = {"type": "object", "properties": {"solution": {"type": "string"}}, "required": ["solution"]}
    return {"type": "object", "properties": {"solutions": {"type": "array", "items": item}},
            "required": ["solutions"]}


class _MathShepherd(Task):
    system_prompt: Optional[str] = SYSTEM_PROMPT
    extra_rules: Optional[str] = RULES_GSM8K
    few_shots: Optional[str] = FEW_SHOTS_GSM8K

    def _system(self) -> Optional[str]:
        if not self.system_prompt:
            return None
        return render_template(self.system_prompt, extra_rules=self.extra_rules or "",
                               few_shots=self.few_shots or "")

    def get_structured_output(self) -> dict[str, Any]:
        return _solutions_schema()

    def _chat(self, content: str) -> ChatType:
        system = self._system()
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]

    def _split(self, output: Optional[str], count: int) -> list[list[str]]:
        """``count`` solutions, each a list of steps ending in its answer."""
        if self.uses_structured_output:
            value = loads_answer(output, dict, 'a JSON object {"solutions": [...]}').get("solutions")
            if not isinstance(value, list) or not all(isinstance(v, dict) and isinstance(v.get("solution"), str)
                                                      for v in value):
                raise UnparsableAnswer(f"step '{self.name}': 'solutions' must be a list of {{\"solution\": text}}",
                                       output)
            texts = [v["solution"] for v in value]
        else:
            texts = [t for t in (output or "").split("\n---") if t.strip()] if count > 1 else [output or ""]
        if len(texts) != count:
            raise UnparsableAnswer(f"step '{self.name}': expected {count} solution(s), found {len(texts)}", output)
        solutions = [split_solution_steps(t) for t in texts]
        if any(not s for s in solutions):
            raise UnparsableAnswer(f"step '{self.name}': a solution has no 'Step i:' or 'The answer is:' part",
                                   output)
        return solutions


class MathShepherdGenerator(_MathShepherd):
    """Solves ``instruction`` step by step: one ``golden_solution`` (``M`` unset; use a strong
    model) or ``M`` candidate ``solutions`` for ``MathShepherdCompleter`` to label."""

    M: Optional[PositiveInt] = None

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def task_outputs(self) -> list[str]:
        return ["solutions" if self.M else "golden_solution"]

    def format_input(self, row: dict[str, Any]) -> ChatType:
        return self._chat(render_template(SOLVE_TEMPLATE, M=self.M, instruction=row["instruction"],
                                          structured=self.uses_structured_output))

    def format_output(self, output: Optional[str], row: dict[str, Any]) -> dict[str, Any]:
        solutions = self._split(output, self.M or 1)
        if self.M:
            return {"solutions": solutions}
        return {"golden_solution": solutions[0]}


class MathShepherdCompleter(_MathShepherd):
    """Labels each step of each of the row's ``solutions`` with ``tags[0]`` / ``tags[1]``
    (appended after a space) against ``golden_solution``'s answer: the step before the last
    by ``N`` completions from it (one request per step), the last step by its own answer,
    which is joined onto it. Writes the labelled ``solutions``; a row fails as a whole when one
    of its requests fails."""

    N: PositiveInt = 1
    tags: list[str] = Field(default_factory=lambda: ["+", "-"])

    @field_validator("tags")
    @classmethod
    def _two_tags(cls, value: list[str]) -> list[str]:
        if len(value) != 2:
            raise ValueError("tags must be [positive, negative]")
        return value

    @property
    def inputs(self) -> list[str]:
        return ["instruction", "solutions", "golden_solution"]

    @property
    def task_outputs(self) -> list[str]:
        return ["solutions"]

    def format_input(self, row: dict[str, Any]) -> ChatType:
        return self._chat(render_template(COMPLETE_TEMPLATE, N=self.N, instruction=row["instruction"],
                                          steps=row["steps"], structured=self.uses_structured_output))

    def format_output(self, output: Optional[str], row: dict[str, Any]) -> dict[str, Any]:
        return {"completions": self._split(output, self.N)}

    def _check(self, row: dict[str, Any]) -> tuple[list[list[str]], str]:
        solutions, golden = row["solutions"], row["golden_solution"]
        if isinstance(solutions, str):
            solutions = json.loads(solutions)
        if isinstance(golden, str):
            golden = split_solution_steps(golden)
        if not isinstance(solutions, list) or not all(isinstance(s, list) and s for s in solutions):
            raise ValueError(f"step '{self.name}': column 'solutions' must be a list of non-empty lists of steps")
        answer = final_answer(golden) if isinstance(golden, list) else None
        if answer is None:
            raise ValueError(f"step '{self.name}': column 'golden_solution' has no 'The answer is:' part")
        return solutions, answer

    async def aprocess(self, inputs: StepInput) -> StepResult:  # type: ignore[override]
        failures: list[RowFailure] = []
        chats: list[ChatType] = []
        where: list[tuple[int, int, int]] = []  # (row, solution, step) of each request
        checked: dict[int, tuple[list[list[str]], str]] = {}
        for i, row in enumerate(inputs):
            try:
                solutions, answer = checked[i] = self._check(row)
                for j, solution in enumerate(solutions):
                    for k in range(len(solution) - 2):  # the last step and the answer are judged directly
                        steps = "\n".join(solution[:k + 1])
                        chats.append(self.format_input({"instruction": row["instruction"], "steps": steps}))
                        where.append((i, j, k))
            except Exception as exc:
                failures.append(RowFailure(i, exc))
                checked.pop(i, None)
        start = current_row_start()
        structured = self.llm.structured_output

        def accept(n: int, answer: GenerateOutput) -> tuple[list[list[str]], str]:
            texts = list(answer.get("generations") or [])
            if not texts or texts[0] is None:
                raise IncompleteAnswer(f"{self.llm.model_name} returned no text")
            if structured is not None:
                structured.validate_text(texts[0])
            return self._split(texts[0], self.N), texts[0]

        results = await generate_cached(
            self.llm, chats, 1, accept, read=self.use_cache,
            positions=[f"{(start or 0) + i}:{j}:{k}" for i, j, k in where],  # type: ignore[misc]
            **dict(self.llm.generation_kwargs))
        reached: dict[tuple[int, int, int], bool] = {}
        raw: dict[int, list[str]] = {}
        for (i, j, k), result in zip(where, results, strict=True):
            if i not in checked:
                continue
            if isinstance(result, BaseException):
                failures.append(RowFailure(i, result))
                checked.pop(i)
                continue
            completions, text = result
            reached[(i, j, k)] = any(final_answer(c) == checked[i][1] for c in completions)
            raw.setdefault(i, []).append(text)
        rows, sources = [], []
        positive, negative = (f" {tag}" for tag in self.tags)
        for i in sorted(checked):
            solutions, answer = checked[i]
            labelled = []
            for j, solution in enumerate(solutions):
                steps = [s + (positive if reached[(i, j, k)] else negative) for k, s in enumerate(solution[:-2])]
                last = solution[-2:] if len(solution) >= 2 else solution
                tail = " ".join(last)
                steps.append(tail + (positive if final_answer(last) == answer else negative))
                labelled.append(steps)
            meta = dict(inputs[i].get(METADATA_COLUMN) or {})
            if self.add_raw_output:
                meta[f"raw_output_{self.name}"] = raw.get(i, [])
            rows.append({**inputs[i], "solutions": labelled, "model_name": self.llm.model_name,
                         METADATA_COLUMN: meta})
            sources.append(i)
        return StepResult(rows, sorted(failures, key=lambda f: f.index), sources)


class FormatPRM(Step):
    """Turns a labelled solution (``instruction``, ``solutions`` as a list of steps, each
    ending in a tag) into process-reward-model training data. ``format="math-shepherd"``
    writes ``input`` (tags replaced by ``step_token``) and ``label`` (the tagged text), as in
    the Math-Shepherd dataset; ``format="trl"`` writes ``prompt``, ``completions`` (the steps
    without tags) and ``labels`` (True for ``tags[0]``), as TRL's PRM trainer reads them.
    (Wang et al., 2024, arXiv:2312.08935.)"""

    format: Literal["math-shepherd", "trl"] = "math-shepherd"
    step_token: str = "ки"
    tags: list[str] = Field(default_factory=lambda: ["+", "-"])

    @property
    def inputs(self) -> list[str]:
        return ["instruction", "solutions"]

    @property
    def outputs(self) -> list[str]:
        return ["input", "label"] if self.format == "math-shepherd" else ["prompt", "completions", "labels"]

    def _untag(self, step: str) -> tuple[str, bool]:
        for tag, good in ((self.tags[0], True), (self.tags[1], False)):
            if step.endswith(tag):
                return step[: -len(tag)].rstrip(), good
        raise ValueError(f"step '{self.name}': a step does not end in one of the tags {self.tags}: {step!r}")

    def process(self, inputs: StepInput) -> StepOutput:
        for row in inputs:
            solution = row["solutions"]
            if not isinstance(solution, list) or not all(isinstance(s, str) for s in solution):
                raise TypeError(f"step '{self.name}': column 'solutions' must be one solution, a list of step "
                                f"strings (expand a list of solutions first), got {type(solution).__name__}")
            parts = [self._untag(step) for step in solution]
            if self.format == "math-shepherd":
                row["input"] = row["instruction"] + " " + "\n".join(f"{text} {self.step_token}" for text, _ in parts)
                row["label"] = row["instruction"] + " " + "\n".join(solution)
            else:
                row["prompt"] = row["instruction"]
                row["completions"] = [text for text, _ in parts]
                row["labels"] = [good for _, good in parts]
        yield inputs
