"""APIGen: function-calling data generated for a function, then checked by running the calls
and by asking a model whether they do what the query asks.

Paper: "APIGen: Automated Pipeline for Generating Verifiable and Diverse Function-Calling
Datasets", Zuxin Liu, Thai Hoang, Jianguo Zhang, et al., 2024, arXiv:2406.18518. Its three
stages are here: a generator writes query/answer pairs for a function (``APIGenGenerator``),
an execution check runs the answers' calls (``APIGenExecutionChecker``), a semantic check asks
a model whether the calls and their results fit the query (``APIGenSemanticChecker``).

The execution check never runs generated calls in the worker: each row's calls run in a
fresh interpreter (``python -I``, its own temporary directory, no synthpipe imported, nothing
of the worker's memory), killed after ``execution_timeout`` seconds. A call that raises is data (the
row is kept with ``keep_row_after_execution_check=False`` and the error as its result); a
call that hangs, or a child that crashes or is killed, fails that row alone with a message
saying which.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

from pydantic import Field, field_validator

from synthpipe.models.base import ChatType
from synthpipe.steps.base import OnError, RowFailure, Step, StepInput, StepResult
from synthpipe.steps.tasks.base import Task, UnparsableAnswer
from synthpipe.steps.tasks.json_answers import loads_answer
from synthpipe.steps.tasks.templates import check_template, render_template

GENERATOR_SYSTEM_PROMPT = (
    "You label data for training models to call functions. For the function you are given, write "
    "realistic user queries together with the exact function calls that answer them. Each query is clear, "
    "states concrete and plausible values for every parameter the call needs, and the set of queries ranges "
    "from simple to demanding uses. Each answer is a list of calls, one per request in the query, whose "
    "argument names, types and ranges match the function's description.")
GENERATOR_TEMPLATE = (
    "Examples of queries and their answers for similar functions:\n{{ examples }}\n\n"
    "Write {{ number }} different query/answer pair(s) for the function `{{ func_name }}`, described as:\n"
    "{{ func_desc }}\n"
    "{% if number > 1 %}A query may bundle several requests, using this function with different arguments."
    "\n{% endif %}")
GENERATOR_FORMAT = (
    '\nAnswer with JSON only: a list of objects {"query": "...", "answers": [{"name": "function name", '
    '"arguments": {"argument": value}}]}.')
SEMANTIC_SYSTEM_PROMPT = (
    "You review function-calling data. Given a user query, the calls made for it and what those calls "
    "returned, decide whether the calls fully and correctly answer the query: the right functions, "
    "arguments that match what the query asks, and results that make sense for it.")
SEMANTIC_TEMPLATE = (
    "Function description:\n{{ func_desc }}\n\nQuery:\n{{ query }}\n\nCalls:\n{{ answers }}\n\n"
    "Results of the calls:\n{{ execution_result }}\n\n"
    'Think it through briefly, then answer with JSON only: {"thought": "your reasoning", "passes": "yes" or "no"}.')


def _calls(value: Any, step: str) -> list[Any]:
    """The calls of an ``answers`` cell: a list, or a JSON string of one (distilabel's form)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"step '{step}': column 'answers' is not JSON: {value[:200]!r}") from None
    if not isinstance(value, list):
        raise ValueError(f"step '{step}': column 'answers' must be a list of calls, got {type(value).__name__}")
    return value


class APIGenGenerator(Task):
    """Writes a ``query`` and its ``answers`` (the calls, as a JSON string) for the row's
    ``func_name`` / ``func_desc`` (and ``tools``, when ``use_tools``), following ``examples``.
    ``number`` pairs are asked for (a list: one chosen per row, seeded by the function name);
    the first pair is kept, as in distilabel. (Liu et al., 2024, arXiv:2406.18518.)"""

    system_prompt: str = GENERATOR_SYSTEM_PROMPT
    use_default_structured_output: bool = False
    number: Union[int, list[int]] = 1
    use_tools: bool = True
    template: Optional[str] = None

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_template(value)

    @property
    def inputs(self) -> dict[str, bool]:
        return {"examples": True, "func_name": True, "func_desc": True, "tools": False}

    @property
    def task_outputs(self) -> list[str]:
        return ["query", "answers"]

    def get_structured_output(self) -> dict[str, Any]:
        call = {"type": "object", "properties": {"name": {"type": "string"}, "arguments": {"type": "object"}},
                "required": ["name", "arguments"]}
        pair = {"type": "object", "properties": {"query": {"type": "string"},
                                                 "answers": {"type": "array", "items": call}},
                "required": ["query", "answers"]}
        return {"type": "object", "properties": {"pairs": {"type": "array", "items": pair}}, "required": ["pairs"]}

    def _number(self, row: dict[str, Any]) -> int:
        if isinstance(self.number, list):
            return random.Random(f"{row['func_name']}").choice(self.number)
        return self.number

    def format_input(self, row: dict[str, Any]) -> ChatType:
        desc = row["func_desc"]
        if self.use_tools and row.get("tools"):
            desc = f"{desc}\n\nThe tools available:\n{row['tools']}"
        body = render_template(self.template or GENERATOR_TEMPLATE, examples=row["examples"],
                               number=self._number(row), func_name=row["func_name"], func_desc=desc)
        if not self.uses_structured_output:
            body += GENERATOR_FORMAT
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": body}]

    def format_output(self, output: Optional[str], row: dict[str, Any]) -> dict[str, Any]:
        if self.uses_structured_output:
            pairs = loads_answer(output, dict, 'a JSON object {"pairs": [...]}').get("pairs")
        else:
            pairs = loads_answer(output, list, "a JSON list of query/answer pairs")
        if not isinstance(pairs, list) or not pairs:
            raise UnparsableAnswer(f"step '{self.name}': no query/answer pair in the answer", output)
        first = pairs[0]
        if not (isinstance(first, dict) and isinstance(first.get("query"), str)
                and isinstance(first.get("answers"), list)
                and all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in first["answers"])):
            raise UnparsableAnswer(f"step '{self.name}': a pair needs a 'query' and 'answers' of named calls", output)
        return {"query": first["query"], "answers": json.dumps(first["answers"])}


class APIGenSemanticChecker(Task):
    """Asks whether the row's ``answers`` (and their ``execution_result``) fit its ``query``
    and ``func_desc``; writes ``thought`` and ``keep_row_after_semantic_check``. With
    ``exclude_failed_execution``, a row whose execution check failed is not sent: it gets
    ``thought=None`` and ``keep_row_after_semantic_check=False``. (Liu et al., 2024,
    arXiv:2406.18518.)"""

    system_prompt: str = SEMANTIC_SYSTEM_PROMPT
    use_default_structured_output: bool = False
    exclude_failed_execution: bool = True
    template: Optional[str] = None

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_template(value)

    @property
    def inputs(self) -> dict[str, bool]:
        return {"func_desc": True, "query": True, "answers": True, "execution_result": True,
                "keep_row_after_execution_check": False}

    @property
    def task_outputs(self) -> list[str]:
        return ["thought", "keep_row_after_semantic_check"]

    def get_structured_output(self) -> dict[str, Any]:
        return {"type": "object", "properties": {"thought": {"type": "string"},
                                                 "passes": {"type": "string", "enum": ["yes", "no"]}},
                "required": ["thought", "passes"]}

    def format_input(self, row: dict[str, Any]) -> ChatType:
        result, answers = row["execution_result"], row["answers"]
        body = render_template(self.template or SEMANTIC_TEMPLATE, func_desc=row["func_desc"], query=row["query"],
                               answers=answers if isinstance(answers, str) else json.dumps(answers),
                               execution_result=result if isinstance(result, str) else json.dumps(result))
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": body}]

    def format_output(self, output: Optional[str], row: dict[str, Any]) -> dict[str, Any]:
        value = loads_answer(output, dict, 'a JSON object {"thought", "passes"}')
        passes = str(value.get("passes", "")).strip().lower()
        if passes not in ("yes", "no"):
            raise UnparsableAnswer(f"step '{self.name}': 'passes' must be \"yes\" or \"no\"", output)
        thought = value.get("thought")
        return {"thought": thought if isinstance(thought, str) else None,
                "keep_row_after_semantic_check": passes == "yes"}

    async def aprocess(self, inputs: StepInput) -> StepResult:  # type: ignore[override]
        if not self.exclude_failed_execution:
            return await super().aprocess(inputs)
        send = [i for i, row in enumerate(inputs) if row.get("keep_row_after_execution_check") is not False]
        sent = await super().aprocess([inputs[i] for i in send]) if send else StepResult([], [], [])
        rows: dict[int, list[dict[str, Any]]] = {}
        for row, source in zip(sent.rows, sent.sources or range(len(sent.rows)), strict=True):
            rows.setdefault(send[source], []).append(row)
        for i, row in enumerate(inputs):
            if i not in set(send):
                rows[i] = [{**row, "thought": None, "keep_row_after_semantic_check": False,
                            "model_name": self.llm.model_name}]
        order = sorted(rows)
        failures = [RowFailure(send[f.index], f.error) for f in sent.failures]
        return StepResult([r for i in order for r in rows[i]], failures, [i for i in order for _ in rows[i]])


class ExecutionFailed(RuntimeError):
    """A row's calls hung past the time limit, or their child process crashed."""


class APIGenExecutionChecker(Step):
    """Runs the calls in ``answers`` against the functions in ``libpath`` (a ``.py`` file, or
    a folder of ``<name>.py`` files each defining ``name``) in a separate process per row, at
    most ``execution_timeout`` seconds and ``max_concurrency`` processes at once. Writes
    ``keep_row_after_execution_check`` (every call ran) and ``execution_result`` (one text per
    call: its result or its error). With ``check_is_dangerous``, a function whose source looks
    like it spawns processes, exits, reads input or the like is not run. (Liu et al., 2024,
    arXiv:2406.18518.)"""

    is_async: ClassVar[bool] = True

    libpath: str
    on_error: Optional[OnError] = "skip"  # a row whose calls hang or crash fails alone
    check_is_dangerous: bool = True
    execution_timeout: float = Field(default=10.0, gt=0)
    max_concurrency: int = Field(default=4, ge=1)

    @property
    def inputs(self) -> list[str]:
        return ["answers"]

    @property
    def outputs(self) -> list[str]:
        return ["keep_row_after_execution_check", "execution_result"]

    def load(self) -> None:
        if not Path(self.libpath).exists():
            raise FileNotFoundError(f"step '{self.name}': libpath {self.libpath!r} does not exist")

    async def _run(self, calls: list[Any], gate: asyncio.Semaphore) -> list[dict[str, Any]]:
        runner = Path(__file__).with_name("apigen_runner.py")
        request = json.dumps({"libpath": str(Path(self.libpath).resolve()), "calls": calls, "timeout":
                              self.execution_timeout, "check_is_dangerous": self.check_is_dangerous}).encode()
        async with gate:
            with tempfile.TemporaryDirectory(prefix="synthpipe-apigen-") as cwd:
                child = await asyncio.create_subprocess_exec(
                    sys.executable, "-I", str(runner), cwd=cwd, stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                try:
                    out, err = await asyncio.wait_for(child.communicate(request), self.execution_timeout)
                except asyncio.TimeoutError:
                    child.kill()
                    await child.wait()
                    raise ExecutionFailed(f"step '{self.name}': the calls {_names(calls)} ran past the time limit "
                                          f"of {self.execution_timeout}s and were killed") from None
                except BaseException:
                    child.kill()
                    await child.wait()
                    raise
        if child.returncode != 0:
            code = child.returncode or 0
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            tail = err.decode(errors="replace").strip()[-1500:]
            raise ExecutionFailed(f"step '{self.name}': the process running {_names(calls)} died with {how}"
                                  + (f"; its stderr ended with: {tail}" if tail else ""))
        try:
            results = json.loads(out.decode(errors="replace"))
        except ValueError:
            raise ExecutionFailed(f"step '{self.name}': the process running {_names(calls)} gave no results "
                                  f"(stdout {out[-300:]!r})") from None
        return results

    async def aprocess(self, inputs: StepInput) -> StepResult:  # type: ignore[override]
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(row: dict[str, Any]) -> dict[str, Any]:
            if not row.get("answers"):
                return {**row, "keep_row_after_execution_check": False,
                        "execution_result": ["No answers were provided."]}
            calls = _calls(row["answers"], self.name)
            results = await self._run(calls, gate) if calls else []
            return {**row, "keep_row_after_execution_check": bool(results) and all(r["keep"] for r in results),
                    "execution_result": [r["execution_result"] for r in results]}

        done = await asyncio.gather(*(one(row) for row in inputs), return_exceptions=True)
        rows, sources, failures = [], [], []
        for i, result in enumerate(done):
            if isinstance(result, BaseException):
                failures.append(RowFailure(i, result))
            else:
                rows.append(result)
                sources.append(i)
        return StepResult(rows, failures, sources)


def _names(calls: list[Any]) -> str:
    names = [c.get("name") if isinstance(c, dict) else "?" for c in calls]
    return ", ".join(f"'{n}'" for n in names) or "(none)"
