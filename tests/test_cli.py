"""The synthpipe command as a user drives it: subprocesses, real pipeline files and scripts,
the LLM test server on 127.0.0.1, the run store's files read back."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import python_path
from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import TextGeneration

pytestmark = [pytest.mark.timeout(240)]
SRC = Path(__file__).resolve().parents[1] / "src"
PRICES = {"test-model": {"input": 1.0, "output": 2.0}}  # per million tokens


def synthpipe(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 180) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=python_path(SRC, *(env or {}).pop("EXTRA_PATH", "").split(os.pathsep)),
                **(env or {}))
    return subprocess.run([sys.executable, "-m", "synthpipe", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=full)


def llm_file(tmp_path: Path, base_url: str, rows: int = 12, batch: int = 3, **settings) -> Path:
    with Pipeline(name="cli-llm", **settings) as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": f"question {i}"} for i in range(rows)], batch_size=batch)
        load >> TextGeneration(name="gen", llm=OpenAILLM(model="test-model", base_url=base_url), input_batch_size=batch)
    return pipeline.save(tmp_path / "pipeline.yaml")


def runs_json(cache: Path) -> list[dict]:
    out = synthpipe("runs", "--json", "--cache-dir", str(cache))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_pipeline_info_lists_steps_connections_and_typed_runtime_parameters(tmp_path, server):
    path = llm_file(tmp_path, server.base_url)
    out = synthpipe("pipeline", "info", "--config", str(path), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert [s["name"] for s in info["steps"]] == ["load_data_from_dicts_0", "gen"]
    assert info["connections"] == [{"from": "load_data_from_dicts_0", "to": "gen"}]
    params = {p["key"]: p for p in info["steps"][1]["runtime_parameters"]}
    assert params["input_batch_size"]["type"] == "int" and params["input_batch_size"]["default"] == 50
    assert params["llm.max_concurrency"]["type"] == "int"
    assert params["llm.timeout"]["type"] == "float"
    assert all(p["doc"] and p["optional"] is True for p in params.values()), params  # as distilabel shows them
    assert info["steps"][0]["to"] == ["gen"] and info["steps"][1]["to"] == []
    table = synthpipe("pipeline", "info", "--config", str(path))
    assert table.returncode == 0 and "llm.max_concurrency" in table.stdout and "Connections" in table.stdout
    assert "No downstream steps" in table.stdout and "Requests in flight at once" in table.stdout


def test_pipeline_run_with_typed_params_then_runs_and_cost(tmp_path, server):
    cache = tmp_path / "cache"
    path = llm_file(tmp_path, server.base_url, prices=PRICES)
    out = synthpipe("pipeline", "run", "--config", str(path), "--param", "gen.input_batch_size=2",
                    "--param", "gen.llm.max_concurrency=2", "--param", "gen.llm.generation_kwargs.temperature=0.25",
                    env={"SYNTHPIPE_CACHE_DIR": str(cache)})
    assert out.returncode == 0, out.stderr
    assert "default: 12 rows" in out.stdout
    assert {r["body"].get("temperature") for r in server.requests[-12:]} == {0.25}  # one entry of a dict, typed
    [run] = runs_json(cache)
    assert run["status"] == "finished" and run["rows"] == {"gen": 12} and run["failed_rows"] == 0
    run_dir = Path(run["path"])
    batches = [json.loads(line) for line in (run_dir / "batches.jsonl").read_text().splitlines()]
    assert sum(1 for b in batches if b["step"] == "gen") == 6  # the typed --param set the batch size (12 / 2)
    [usage] = run["usage"]
    assert usage["step"] == "gen" and usage["model"] == "test-model" and usage["requests"] == 12
    tokens = usage["input_tokens"] + usage["output_tokens"]
    assert tokens > 0 and run["tokens"] == tokens and usage["cached_tokens"] == 0
    expected = (usage["paid_input"] * 1.0 + usage["paid_output"] * 2.0) / 1_000_000
    assert run["cost"] == pytest.approx(expected)
    table = synthpipe("runs", "--cache-dir", str(cache))
    assert table.returncode == 0 and run["run"][:15] in table.stdout and "finished" in table.stdout
    header = next(line for line in table.stdout.splitlines() if "pipeline" in line and "status" in line)
    assert [c for c in ("run", "pipeline", "status", "rows", "failed", "tokens", "cost", "size", "when")
            if c not in header] == []
    line = next(line for line in table.stdout.splitlines() if "finished" in line)
    assert "cli-llm" in line and f"{run['tokens']:,}" in line and f"{run['cost']:.4f}" in line


def test_unknown_param_and_missing_file_are_usage_errors(tmp_path, server):
    path = llm_file(tmp_path, server.base_url)
    out = synthpipe("pipeline", "run", "--config", str(path), "--param", "gen.input_batch_sze=2")
    assert out.returncode == 2
    assert "'input_batch_sze' is unknown" in out.stderr and "did you mean 'input_batch_size'" in out.stderr
    out = synthpipe("pipeline", "run", "--config", str(path), "--param", "nope.x=1")
    assert out.returncode == 2 and "no step 'nope'" in out.stderr
    out = synthpipe("pipeline", "run", "--config", str(path), "--param", "gen.llm.max_concurrency=many")
    assert out.returncode == 2 and "max_concurrency" in out.stderr
    out = synthpipe("run", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "does not exist" in out.stderr
    out = synthpipe("frobnicate")
    assert out.returncode == 2


SCRIPT = '''
from pathlib import Path
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts, StepInput, step

@step(inputs=["n"], outputs=["half"], step_type="normal")
def Halve(inputs: StepInput):
    for row in inputs:
        if row["n"] % 5 == 3:
            raise ValueError(f"cannot halve {row['n']}")
        row["half"] = row["n"] / 2
    yield inputs

with Pipeline(name="script-pipe") as pipeline:
    LoadDataFromDicts(data=[{"n": i} for i in range(10)], batch_size=1) >> Halve(name="halve", on_error="skip",
                                                                              input_batch_size=1)

if __name__ == "__main__":
    Path("MAIN_RAN").write_text("the __main__ block ran")
    pipeline.run()
'''


def test_run_a_script_without_its_main_block_then_failures(tmp_path):
    script = tmp_path / "my_pipeline.py"
    script.write_text(SCRIPT)
    cache = tmp_path / "cache"
    out = synthpipe("run", str(script), "--cache-dir", str(cache), "--output", str(tmp_path / "result"),
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "MAIN_RAN").exists()
    assert "default: 8 rows" in out.stdout and "2 failed row(s)" in out.stdout
    from synthpipe.distiset import Distiset

    saved = Distiset.load_from_disk(tmp_path / "result")
    assert saved["default"]["train"].num_rows == 8 and len(saved.failed_rows) == 2
    [run] = runs_json(cache)
    assert run["failed_rows"] == 2 and run["status"] == "finished" and run["tokens"] == 0
    groups = synthpipe("failures", run["run"], "--cache-dir", str(cache), "--json")
    assert groups.returncode == 0, groups.stderr
    [group] = json.loads(groups.stdout)
    assert group["step"] == "halve" and group["error_type"] == "ValueError" and group["count"] == 2
    assert sorted(group["rows"]) == [3, 8] and "cannot halve" in group["traceback"]
    text = synthpipe("failures", "last", "--cache-dir", str(cache))
    assert text.returncode == 0 and "2 × ValueError" in text.stdout and "Traceback" in text.stdout
    assert synthpipe("failures", "no-such-run", "--cache-dir", str(cache)).returncode == 2


def test_a_failed_run_exits_1(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(SCRIPT.replace('on_error="skip"', 'on_error="fail"'))
    out = synthpipe("run", str(script), "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "step 'halve'" in out.stderr and "batch 3" in out.stderr
    tail = out.stderr[out.stderr.index("the run failed"):]
    assert "Traceback" in tail and "in Halve" in tail and "ValueError: cannot halve 3" in tail
    assert 'input row: {"n": 3' in tail


def test_a_script_without_a_pipeline_or_with_two_is_a_usage_error(tmp_path):
    (tmp_path / "none.py").write_text("x = 1\n")
    out = synthpipe("run", str(tmp_path / "none.py"))
    assert out.returncode == 2 and "defines no Pipeline" in out.stderr
    (tmp_path / "two.py").write_text("from synthpipe.pipeline import Pipeline\na = Pipeline(name='a')\n"
                                     "b = Pipeline(name='b')\n")
    out = synthpipe("run", str(tmp_path / "two.py"))
    assert out.returncode == 2 and "--pipeline NAME" in out.stderr


def test_python_dash_m_and_help(tmp_path):
    out = synthpipe("--help")
    assert out.returncode == 0
    for command in ("run", "runs", "failures", "report", "pipeline"):
        assert command in out.stdout


def test_budget_stops_gracefully_and_resume_finishes_without_counting_twice(tmp_path, server):
    server.configure(latency=0.15)
    cache = tmp_path / "cache"
    path = llm_file(tmp_path, server.base_url, rows=24, batch=2, prices=PRICES)
    env = {"SYNTHPIPE_CACHE_DIR": str(cache)}
    full = 24 * 5  # the server counts words: 2 input and 3 output tokens per row
    stopped = synthpipe("pipeline", "run", "--config", str(path), "--param", "gen.llm.max_concurrency=2",
                        "--max-budget", "30 tokens", env=dict(env), timeout=200)
    assert stopped.returncode == 1, stopped.stderr
    assert "stopped before passing the budget of 30 tokens" in stopped.stderr
    [first] = runs_json(cache)
    assert first["status"] == "budget"
    assert 0 < first["paid_tokens"] <= 30  # stopped before passing it, not just after
    resumed = synthpipe("pipeline", "run", "--config", str(path), "--param", "gen.llm.max_concurrency=2",
                        "--max-budget", "1000 tokens", env=dict(env), timeout=200)
    assert resumed.returncode == 0, resumed.stderr
    assert "default: 24 rows" in resumed.stdout
    first, second = sorted(runs_json(cache), key=lambda r: r["run"])
    assert second["status"] == "finished"
    assert first["tokens"] + second["tokens"] == full  # every row's tokens once, over both runs
    assert first["paid_tokens"] + second["paid_tokens"] == full


def test_answers_from_the_response_cache_show_as_cached_not_paid(tmp_path, server):
    cache = tmp_path / "cache"
    path = llm_file(tmp_path, server.base_url, prices=PRICES)
    env = {"SYNTHPIPE_CACHE_DIR": str(cache)}
    assert synthpipe("run", str(path), env=dict(env)).returncode == 0
    # a changed task parameter computes the step again, with the very same requests
    text = path.read_text()
    assert "add_raw_output: true" in text
    path.write_text(text.replace("add_raw_output: true", "add_raw_output: false"))
    out = synthpipe("run", str(path), env=dict(env))
    assert out.returncode == 0, out.stderr
    first, second = sorted(runs_json(cache), key=lambda r: r["run"])
    assert first["paid_tokens"] == first["tokens"] > 0
    [usage] = second["usage"]
    assert usage["cached_tokens"] == second["tokens"] == first["tokens"]
    assert usage["paid_input"] == usage["paid_output"] == 0 and usage["cost"] == 0
    assert "served from the response cache, not paid" in out.stderr


def test_cost_is_unknown_without_a_price(tmp_path, server):
    cache = tmp_path / "cache"
    path = llm_file(tmp_path, server.base_url)
    assert synthpipe("run", str(path), "--cache-dir", str(cache)).returncode == 0
    [run] = runs_json(cache)
    assert run["tokens"] > 0 and run["cost"] is None
    assert "unknown" in synthpipe("runs", "--cache-dir", str(cache)).stdout


def test_prices_from_a_file_and_a_bad_prices_file_is_a_usage_error(tmp_path, server):
    cache = tmp_path / "cache"
    prices = tmp_path / "prices.yaml"
    prices.write_text("test-model: {input: 1.0, output: 2.0}\n")
    path = llm_file(tmp_path, server.base_url, prices=str(prices))
    assert synthpipe("run", str(path), env={"SYNTHPIPE_CACHE_DIR": str(cache)}).returncode == 0
    [run] = runs_json(cache)
    [usage] = run["usage"]
    assert run["cost"] == pytest.approx((usage["input_tokens"] * 1.0 + usage["output_tokens"] * 2.0) / 1e6)
    prices.write_text("test-model: {input: cheap}\n")
    bad = synthpipe("run", str(path), "--no-cache", env={"SYNTHPIPE_CACHE_DIR": str(cache)})
    assert bad.returncode == 2 and "prices for 'test-model' must be numbers" in bad.stderr, bad.stderr


def test_a_money_budget_without_prices_is_refused(tmp_path, server):
    path = llm_file(tmp_path, server.base_url, max_budget=1.0)
    out = synthpipe("run", str(path))
    assert out.returncode == 2 and "no price for test-model" in out.stderr


def test_report_has_every_element_and_renders_in_headless_chromium(tmp_path, server):
    """The page's elements are checked in the file itself (the report has no script: the file is its
    DOM) and, where Debian's chromium is installed (.ci/run installs it), in what Chromium renders."""
    browser = shutil.which("chromium")
    cache = tmp_path / "cache"
    script = tmp_path / "my_pipeline.py"
    script.write_text(SCRIPT)
    assert synthpipe("run", str(script), "--cache-dir", str(cache), cwd=tmp_path).returncode == 0
    path = llm_file(tmp_path, server.base_url, prices=PRICES)
    assert synthpipe("run", str(path), "--cache-dir", str(cache)).returncode == 0
    runs = sorted(runs_json(cache), key=lambda r: r["run"])
    pages = {}
    for run in runs:
        target = tmp_path / f"{run['pipeline']}.html"
        out = synthpipe("report", run["run"], "--cache-dir", str(cache), "-o", str(target))
        assert out.returncode == 0, out.stderr
        page = Path(out.stdout.strip())
        assert "http://" not in page.read_text().replace("http://www.w3.org/2000/svg", "")  # nothing fetched
        assert "<script" not in page.read_text()
        dom = page.read_text() if browser is None else subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=90).stdout
        for element in ('id="dag-svg"', 'class="dag-step"', 'id="throughput-svg"', 'class="rate-line"',
                        'id="timeline-svg"', 'class="batch"', 'id="usage"', 'id="samples"', 'id="run-status"'):
            assert element in dom, (element, run["pipeline"])
        pages[run["pipeline"]] = dom
    failed = pages["script-pipe"]
    assert 'class="failure-group"' in failed and "cannot halve 3" in failed and "Traceback" in failed
    llm = pages["cli-llm"]
    assert 'id="usage-table"' in llm and "test-model" in llm and "question 0" in llm
    assert 'id="llm-requests"' in llm
    if browser is None:
        return
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,1500", (tmp_path / "script-pipe.html").as_uri()],
                   capture_output=True, timeout=90)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_estimate_projects_tokens_cost_and_time_from_a_sample(tmp_path, server):
    cache = tmp_path / "cache"
    path = llm_file(tmp_path, server.base_url, rows=40, batch=10, prices=PRICES)
    out = synthpipe("estimate", str(path), "--sample", "4", "--json", env={"SYNTHPIPE_CACHE_DIR": str(cache)})
    assert out.returncode == 0, out.stderr
    est = json.loads(out.stdout)
    assert est["sample_rows"] == 4 and est["total_rows"] == 40 and est["scale"] == 10
    assert est["tokens"] == 40 * 5  # 2 in + 3 out per row, as the sample showed
    [model] = est["per_model"]
    assert model["cost"] == pytest.approx((40 * 2 * 1.0 + 40 * 3 * 2.0) / 1_000_000)
    assert est["seconds"] >= 0 and any("in proportion to rows" in a for a in est["assumptions"])
    assert server.stats()["total_requests"] == 4  # only the sample was asked for
    assert runs_json(cache)[0]["durable"] is False  # a try-out: nothing the next run would reuse
    text = synthpipe("estimate", str(path), "--sample", "4", "--rows", "1000",
                     env={"SYNTHPIPE_CACHE_DIR": str(cache)})
    assert text.returncode == 0 and "estimate for 1,000 rows" in text.stdout and "assumptions:" in text.stdout


SECRET_SCRIPT = '''
from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import TextGeneration

with Pipeline(name="secret-pipe", prices={{"test-model": {{"input": 1, "output": 1}}}}) as pipeline:
    load = LoadDataFromDicts(data=[{{"instruction": f"q {{i}}"}} for i in range(12)], batch_size=4)
    llm = OpenAILLM(model="test-model", base_url="{plain_url}", api_key="{key}", max_retries=0)
    in_url = OpenAILLM(model="test-model", base_url="{base_url}", max_retries=0)  # credentials in the URL
    load >> [TextGeneration(name="gen", llm=llm, input_batch_size=4, on_error="skip"),
             TextGeneration(name="gen_url", llm=in_url, input_batch_size=4, on_error="skip")]
'''


def test_a_secret_key_is_never_printed_logged_stored_or_reported(tmp_path, server):
    key = "sk-live-TOPSECRET-4f9c2a7e1b"
    password = "url-PASSWORD-77aa"
    server.configure(fail_first=3, fail_status=401)
    base_url = server.base_url.replace("http://", f"http://admin:{password}@")
    script = tmp_path / "secret.py"
    script.write_text(SECRET_SCRIPT.format(base_url=base_url, plain_url=server.base_url, key=key))
    cache = tmp_path / "cache"
    env = {"SYNTHPIPE_CACHE_DIR": str(cache), "SYNTHPIPE_LOG_LEVEL": "DEBUG", "OPENAI_API_KEY": ""}
    outputs = [synthpipe("run", str(script), cwd=tmp_path, env=dict(env))]
    assert outputs[0].returncode == 0, outputs[0].stderr
    [run] = runs_json(cache)
    assert run["failed_rows"] == 3  # the failures happened, and are kept
    outputs.append(synthpipe("failures", "last", "--cache-dir", str(cache)))
    outputs.append(synthpipe("failures", "last", "--json", "--cache-dir", str(cache)))
    outputs.append(synthpipe("report", "last", "--cache-dir", str(cache)))
    outputs.append(synthpipe("runs", "--json", "--cache-dir", str(cache)))
    outputs.append(synthpipe("pipeline", "info", "--config", str(script), "--json"))
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    assert "401" in outputs[1].stdout
    files = [p for p in cache.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"pipeline.log", "failed_rows.jsonl", "report.html", "run.json", "batches.jsonl"} <= names
    for secret in (key, password):
        for o in outputs:
            assert secret not in o.stdout and secret not in o.stderr
        for p in files:
            assert secret.encode() not in p.read_bytes(), p


def test_plain_progress_lines_show_llm_requests_retries_and_429s(tmp_path, server):
    server.configure(latency=0.1, fail_first=4, fail_status=429, retry_after=0.05)
    cache = tmp_path / "cache"
    path = llm_file(tmp_path, server.base_url, rows=30, batch=3, prices=PRICES)
    env = {"SYNTHPIPE_CACHE_DIR": str(cache), "SYNTHPIPE_PROGRESS": "1", "SYNTHPIPE_PROGRESS_EVERY": "0.3"}
    out = synthpipe("run", str(path), "--param", "gen.llm.max_concurrency=2", env=env)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("synthpipe: ") and "s: " in line
             and "test-model:" in line]
    assert lines, out.stderr
    assert re.search(r"test-model: \d+ in flight, \d+ retries, \d+×429", lines[-1])
    [run] = runs_json(cache)
    activity = run["llm"]["test-model"]
    assert activity["http_429"] == 4 and activity["retries"] == 4 and activity["requests"] == 30
    assert activity["failed"] == 0


def test_pipeline_run_from_a_url(tmp_path, server):
    import functools
    import http.server
    import threading

    path = llm_file(tmp_path, server.base_url, rows=6)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{path.name}"
        out = synthpipe("pipeline", "run", "--config", url, env={"SYNTHPIPE_CACHE_DIR": str(tmp_path / "cache")})
        assert out.returncode == 0, out.stderr
        assert "default: 6 rows" in out.stdout
        missing = synthpipe("pipeline", "info", "--config", url.replace(path.name, "nope.yaml"))
        assert missing.returncode == 2 and "could not read the pipeline file" in missing.stderr
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_a_money_budget_stops_before_passing_it(tmp_path, server):
    server.configure(latency=0.15)
    cache = tmp_path / "cache"
    path = llm_file(tmp_path, server.base_url, rows=24, batch=2, prices=PRICES)
    per_row = (2 * 1.0 + 3 * 2.0) / 1_000_000
    # 8 requests at once: without a gate, the first batches sent would pass the budget together
    out = synthpipe("run", str(path), "--param", "gen.llm.max_concurrency=8", "--max-budget", f"{per_row * 8:.10f}",
                    env={"SYNTHPIPE_CACHE_DIR": str(cache)})
    assert out.returncode == 1, out.stderr
    assert "stopped before passing the budget" in out.stderr
    [run] = runs_json(cache)
    assert run["status"] == "budget" and 0 < run["cost"] <= per_row * 8 * (1 + 1e-9)
    assert run["budget"] == {"cost": pytest.approx(per_row * 8), "tokens": None}


def test_a_token_budget_over_two_model_steps_is_not_passed_and_resume_finishes(tmp_path, server):
    server.configure(latency=0.1)
    cache = tmp_path / "cache"
    with Pipeline(name="two-llm-steps") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": f"question {i}"} for i in range(16)], batch_size=2)
        first = TextGeneration(name="gen", llm=OpenAILLM(model="test-model", base_url=server.base_url),
                               input_batch_size=2)
        second = TextGeneration(name="again", llm=OpenAILLM(model="test-model", base_url=server.base_url),
                                input_batch_size=2, input_mappings={"instruction": "generation"},
                                output_mappings={"generation": "second"})
        load >> first >> second
    path = pipeline.save(tmp_path / "two.yaml")
    env = {"SYNTHPIPE_CACHE_DIR": str(cache)}
    stopped = synthpipe("run", str(path), "-p", "gen.llm.max_concurrency=8", "-p", "again.llm.max_concurrency=8",
                        "--max-budget", "40 tokens", env=dict(env), timeout=200)
    assert stopped.returncode == 1 and "stopped before passing the budget of 40 tokens" in stopped.stderr
    [run] = runs_json(cache)
    assert run["status"] == "budget" and 0 < run["paid_tokens"] <= 40
    resumed = synthpipe("run", str(path), "--max-budget", "100000 tokens", env=dict(env), timeout=200)
    assert resumed.returncode == 0, resumed.stderr
    runs = sorted(runs_json(cache), key=lambda r: r["run"])
    assert sum(r["paid_tokens"] for r in runs) == 16 * (2 + 3) + 16 * (3 + 4), [r["usage"] for r in runs]


def test_a_provider_reported_cost_is_used_where_no_price_is_given(tmp_path, server):
    server.configure(cost_per_token=0.001)
    cache = tmp_path / "cache"
    path = llm_file(tmp_path, server.base_url)  # no prices
    env = {"SYNTHPIPE_CACHE_DIR": str(cache)}
    assert synthpipe("run", str(path), env=dict(env)).returncode == 0
    [run] = runs_json(cache)
    assert run["cost"] == pytest.approx(0.001 * run["tokens"])
    path.write_text(path.read_text().replace("add_raw_output: true", "add_raw_output: false"))
    assert synthpipe("run", str(path), env=dict(env)).returncode == 0
    second = max(runs_json(cache), key=lambda r: r["run"])
    assert second["tokens"] == run["tokens"] and second["cost"] == 0  # all from the response cache


def test_pipeline_run_pushes_the_result_with_distilabels_flags_and_never_prints_the_token(tmp_path, server):
    from synthpipe.testing.hub_server import HubServer

    pytest.importorskip("huggingface_hub")
    token, repo = "hf_cli_token_DO-NOT-LEAK-77", "standin-user/cli-push"
    cache = tmp_path / "cache"
    path = llm_file(tmp_path, server.base_url, rows=6)
    with HubServer(token=token) as hub:
        env = {**hub.env(tmp_path / "hf"), "SYNTHPIPE_CACHE_DIR": str(cache)}
        out = synthpipe("pipeline", "run", "--config", str(path), "--repo-id", repo, "--commit-message",
                        "first synthetic rows", "--private", "--token", token, env=dict(env), timeout=240)
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"pushed to the Hub: dataset {repo} (private)" in out.stdout
        files = hub.files(repo)
        assert sorted(files) == ["README.md", "data/train-00000-of-00001.parquet", "pipeline.log", "pipeline.yaml"]
        assert token.encode() not in files["pipeline.log"]
        assert hub.repos[repo].private and "first synthetic rows" in hub.repos[repo].messages
        refused = synthpipe("pipeline", "run", "--config", str(path), "--repo-id", repo, "--token", "hf_wrong",
                            env=dict(env), timeout=240)
        assert refused.returncode == 1 and "401" in refused.stderr and "hf_wrong" not in refused.stderr
    alone = synthpipe("pipeline", "run", "--config", str(path), "--private", env=dict(env))
    assert alone.returncode == 2 and "go with --repo-id" in alone.stderr
    for text in (out.stdout, out.stderr):
        assert token not in text
    for stored in cache.rglob("*"):
        if stored.is_file():
            assert token.encode() not in stored.read_bytes(), stored
