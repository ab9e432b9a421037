"""The ``synthpipe`` command: a thin face over the Python API (``Pipeline.from_file``,
``Pipeline.run``, the run store's files); it has no code path of its own.

Exit status: 0 done, 1 the run failed (or stopped at its budget), 2 bad usage or input,
130 / 143 interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from synthpipe.errors import PipelineDefinitionError, PipelineFileError, PipelineValidationError, SynthpipeUserError

EXIT_FAILED, EXIT_USAGE = 1, 2

app = typer.Typer(name="synthpipe", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Build, run and inspect synthpipe pipelines.")
pipeline_app = typer.Typer(no_args_is_help=True, help="distilabel's commands: run or describe a pipeline file.")
app.add_typer(pipeline_app, name="pipeline")

PARAM_HELP = ("A runtime parameter, STEP.KEY=VALUE, STEP.llm.KEY=VALUE or one entry of a dict one "
              "(STEP.llm.generation_kwargs.temperature=0.7), typed by the parameter; repeatable.")
TRUST_HELP = "Import custom step classes from this module when loading a pipeline file; repeatable."


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    return (SynthpipeUserError, PipelineFileError, PipelineValidationError, PipelineDefinitionError, LookupError,
            FileNotFoundError)


def _guard(action: Any) -> Any:
    """Run a command's body, turning what ends it into the exit status."""
    from synthpipe.run.accounting import BudgetReached

    try:
        return action()
    except typer.Exit:
        raise
    except BudgetReached as exc:
        _err(f"synthpipe: {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    except _user_errors() as exc:
        _err(f"synthpipe: error: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except SystemExit:
        raise
    except Exception as exc:
        from synthpipe.ui.error_text import failed_run_text

        debug = os.environ.get("SYNTHPIPE_LOG_LEVEL", "").upper() == "DEBUG"
        if debug:
            import traceback

            traceback.print_exc()
        _err(failed_run_text(exc, debug))
        raise typer.Exit(EXIT_FAILED) from None


BUDGET_HELP = "Stop (keeping every finished batch) before passing this: money (e.g. 2.5, at the pipeline's prices) " \
              "or tokens (e.g. '50000 tokens'); a resumed run gets a new budget."


REPO_HELP = "Push the result (a Distiset: one config per leaf, a card, pipeline.yaml) to this Hub dataset repo."
TOKEN_HELP = "The Hub token for the push (else HF_TOKEN or the saved login); never printed."


def _push(repo_id: Optional[str], commit_message: Optional[str], private: bool,
          token: Optional[str]) -> Optional[dict[str, Any]]:
    """The push the flags ask for; the other push flags without --repo-id are a usage error."""
    if repo_id is None:
        if commit_message or private or token:
            _err("synthpipe: error: --commit-message, --private and --token go with --repo-id")
            raise typer.Exit(EXIT_USAGE)
        return None
    return {"repo_id": repo_id, "commit_message": commit_message, "private": private, "token": token}


def parse_budget(text: Optional[str]) -> Any:
    """``2.5`` is money; ``50000 tokens`` (or ``50000t``) is tokens."""
    if text is None:
        return None
    value = text.strip().lower().replace(",", "").replace("_", "")
    unit_tokens = value.endswith(("tokens", "token", "t"))
    number = value.rstrip("tokens").strip() if unit_tokens else value
    try:
        amount = float(number)
    except ValueError:
        raise SynthpipeUserError(f"--max-budget {text!r}: give money (2.5) or tokens ('50000 tokens')") from None
    return {"tokens": int(amount)} if unit_tokens else amount


def _run(source: str, params: list[str], use_cache: bool, retry_failed: bool, output: Optional[Path],
         cache_dir: Optional[str], pipeline_name: Optional[str], trust: list[str], allow_custom: bool,
         max_budget: Optional[str] = None, push: Optional[dict[str, Any]] = None) -> None:
    from synthpipe.cli.loading import load_pipeline
    from synthpipe.cli.params import parse_params

    def body() -> None:
        pipeline = load_pipeline(source, pipeline_name=pipeline_name, trust=trust, allow_custom=allow_custom)
        if cache_dir:
            pipeline.cache_dir = cache_dir
        if max_budget is not None:
            pipeline.max_budget = parse_budget(max_budget)
        parameters = parse_params(pipeline.steps, params)
        distiset = pipeline.run(parameters=parameters or None, use_cache=use_cache, retry_failed=retry_failed)
        if output is not None:
            distiset.save_to_disk(output)
        for leaf, dataset in distiset.items():
            print(f"{leaf}: {dataset['train'].num_rows:,} rows")
        run = distiset.run_dir.name if distiset.run_dir else "?"
        if distiset.failed_rows:
            print(f"{len(distiset.failed_rows):,} failed row(s): synthpipe failures {run}")
        print(f"run {run} in {distiset.run_dir}" + (f"; saved to {output}" if output else ""))
        if push and push.get("repo_id"):
            distiset.push_to_hub(push["repo_id"], private=push["private"], token=push["token"],
                                 **({"commit_message": push["commit_message"]} if push["commit_message"] else {}))
            print(f"pushed to the Hub: dataset {push['repo_id']}" + (" (private)" if push["private"] else ""))

    _guard(body)


@app.command("run")
def run_command(
    source: str = typer.Argument(..., help="A pipeline file (YAML/JSON) or a Python script defining a Pipeline."),
    param: list[str] = typer.Option([], "--param", "-p", help=PARAM_HELP),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Where runs are stored (else the default)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Compute everything again."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Give the failed rows one more try."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Save the result (a Distiset) here."),
    pipeline_name: Optional[str] = typer.Option(None, "--pipeline", help="Which pipeline of a script to run."),
    trust: list[str] = typer.Option([], "--trust", help=TRUST_HELP),
    allow_custom: bool = typer.Option(False, "--allow-custom", help="Import any class a pipeline file names."),
    max_budget: Optional[str] = typer.Option(None, "--max-budget", help=BUDGET_HELP),
    repo_id: Optional[str] = typer.Option(None, "--repo-id", help=REPO_HELP),
    commit_message: Optional[str] = typer.Option(None, "--commit-message", help="The commit message of the push."),
    private: bool = typer.Option(False, "--private/--no-private", help="Make the pushed dataset private."),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP, show_default=False),
) -> None:
    """Run a pipeline: resumes where an earlier run of it stopped; with --repo-id, push the result."""
    _run(source, param, not no_cache, retry_failed, output, cache_dir, pipeline_name, trust, allow_custom,
         max_budget, _push(repo_id, commit_message, private, token))


@pipeline_app.command("run")
def pipeline_run(
    config: str = typer.Option(..., "--config", help="The pipeline file: a path or an http(s) URL."),
    param: list[str] = typer.Option([], "--param", help=PARAM_HELP),
    ignore_cache: bool = typer.Option(False, "--ignore-cache/--no-ignore-cache", help="Compute everything again."),
    output: Optional[Path] = typer.Option(None, "--output", help="Save the result (a Distiset) here."),
    trust: list[str] = typer.Option([], "--trust", help=TRUST_HELP),
    max_budget: Optional[str] = typer.Option(None, "--max-budget", help=BUDGET_HELP),
    repo_id: Optional[str] = typer.Option(None, "--repo-id", help=REPO_HELP),
    commit_message: Optional[str] = typer.Option(None, "--commit-message", help="The commit message of the push."),
    private: bool = typer.Option(False, "--private/--no-private", help="Make the pushed dataset private."),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP, show_default=False),
) -> None:
    """Run the pipeline a file describes (as distilabel's `pipeline run`), then push it with --repo-id."""
    _run(config, param, not ignore_cache, False, output, None, None, trust, False, max_budget,
         _push(repo_id, commit_message, private, token))


@pipeline_app.command("info")
def pipeline_info(
    config: str = typer.Option(..., "--config", help="The pipeline file (or script): a path or an http(s) URL."),
    as_json: bool = typer.Option(False, "--json", help="Print it as JSON."),
    trust: list[str] = typer.Option([], "--trust", help=TRUST_HELP),
) -> None:
    """Steps, connections and runtime parameters (type, default, doc) of a pipeline."""
    from synthpipe.cli.info import describe, render
    from synthpipe.cli.loading import load_pipeline

    def body() -> None:
        info = describe(load_pipeline(config, trust=trust))
        if as_json:
            print(json.dumps(info, indent=1, default=repr))
        else:
            _console().print(render(info))

    _guard(body)


@app.command("estimate")
def estimate_command(
    source: str = typer.Argument(..., help="A pipeline file (YAML/JSON) or a Python script defining a Pipeline."),
    sample: int = typer.Option(10, "--sample", "-n", help="Rows to run (against the real LLMs: paid for)."),
    rows: Optional[int] = typer.Option(None, "--rows", help="Rows of the full input (else what generators hold)."),
    param: list[str] = typer.Option([], "--param", "-p", help=PARAM_HELP),
    pipeline_name: Optional[str] = typer.Option(None, "--pipeline", help="Which pipeline of a script."),
    trust: list[str] = typer.Option([], "--trust", help=TRUST_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print it as JSON."),
) -> None:
    """Project tokens, cost and time of a full run from a small sample, with the assumptions."""
    from synthpipe.cli.loading import load_pipeline
    from synthpipe.cli.params import parse_params
    from synthpipe.run.estimate import dumps

    def body() -> None:
        pipeline = load_pipeline(source, pipeline_name=pipeline_name, trust=trust)
        result = pipeline.estimate(sample, rows=rows, parameters=parse_params(pipeline.steps, param) or None)
        print(dumps(result) if as_json else result)

    _guard(body)


@app.command("runs")
def runs_command(
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="The cache folder to read."),
    as_json: bool = typer.Option(False, "--json", help="Print them as JSON."),
) -> None:
    """The runs in the cache: pipeline, status, rows, failed rows, tokens, cost, size, when."""
    from synthpipe.cli.runs import cache_root, list_runs, runs_table

    def body() -> None:
        runs = list_runs(cache_root(cache_dir))
        if as_json:
            print(json.dumps(runs, indent=1, default=repr))
        else:
            _console().print(runs_table(runs))

    _guard(body)


@app.command("failures")
def failures_command(
    run: str = typer.Argument(..., help="A run id (or a unique start of one, or 'last'), or its folder."),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="The cache folder to read."),
    as_json: bool = typer.Option(False, "--json", help="Print the groups as JSON."),
) -> None:
    """A run's failed rows, grouped by step and error, one traceback each."""
    from synthpipe.cli.runs import cache_root, failures_text
    from synthpipe.store.run_record import failure_groups, find_run

    def body() -> None:
        run_dir = find_run(cache_root(cache_dir), run)
        groups = failure_groups(run_dir)
        print(json.dumps(groups, indent=1, default=repr) if as_json else failures_text(run_dir, groups))

    _guard(body)


@app.command("report")
def report_command(
    run: str = typer.Argument(..., help="A run id (or a unique start of one, or 'last'), or its folder."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="The HTML file (else report.html in the run)."),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="The cache folder to read."),
) -> None:
    """One self-contained HTML page of a run: DAG, throughput, timeline, failures, tokens, samples."""
    from synthpipe.cli.runs import cache_root
    from synthpipe.store.run_record import find_run
    from synthpipe.ui.report import write_report

    def body() -> None:
        run_dir = find_run(cache_root(cache_dir), run)
        print(write_report(run_dir, output or run_dir / "report.html"))

    _guard(body)


def _console() -> Any:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)


def main() -> None:
    app()
