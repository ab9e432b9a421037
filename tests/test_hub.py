"""Publishing to the Hub, against the local stand-in (synthpipe.testing.hub_server): a real
pipeline is run, pushed with Distiset.push_to_hub and a PushToHub step, and read back through
the same endpoint with datasets.load_dataset, in a child process whose Hub clients point at the
stand-in (they read HF_ENDPOINT at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import python_path
from synthpipe.testing.hub_server import HubServer

pytest.importorskip("datasets")
pytest.importorskip("huggingface_hub")
pytestmark = [pytest.mark.timeout(300)]

TESTS = Path(__file__).parent
TOKEN = "hf_standin_token"
REPO = "standin-user/demo"
LLM_KEY = "sk-llm-key-DO-NOT-LEAK-42"


def _run(hub: HubServer, llm_url: str, tmp_path: Path, token: str, mode: str) -> tuple[dict, str]:
    env = {**os.environ, **hub.env(tmp_path / "hf"), "PYTHONPATH": python_path(TESTS, TESTS.parent / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", "import hub_pipeline; hub_pipeline.main()", llm_url, REPO, token,
         str(tmp_path / "cache"), mode],
        env=env, capture_output=True, text=True, timeout=280)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), out


def test_a_pipeline_pushed_to_the_hub_reads_back_with_its_card_and_files(server, tmp_path):
    with HubServer(token=TOKEN) as hub:
        result, output = _run(hub, server.base_url, tmp_path, TOKEN, "push")
        files = hub.files(REPO)
        assert not hub.unhandled, hub.unhandled
        # one config per leaf, each read back whole and in order through the same endpoint
        assert set(result["loaded"]) == {"judge", "pushed"}
        for name in ("judge", "pushed"):
            assert result["loaded"][name] == result["local"][name]
            assert len(result["loaded"][name]) == 9
        assert result["step_rows"] == result["local"]["pushed"]  # what the PushToHub step pushed
        assert sorted(files) == ["README.md", "judge/train-00000-of-00001.parquet", "pipeline.log",
                                 "pipeline.yaml", "pushed/train-00000-of-00001.parquet"]
        assert hub.lfs_paths(REPO) == ["judge/train-00000-of-00001.parquet", "pushed/train-00000-of-00001.parquet"]
        assert hub.repos[REPO].private and not hub.repos[f"{REPO}-step"].private
        assert result["split"] == {"judge": {"train": 6, "test": 3}, "pushed": {"train": 6, "test": 3}}

        card = files["README.md"].decode()
        front = yaml.safe_load(card.split("---\n")[1])
        assert {c["config_name"] for c in front["configs"]} == {"judge", "pushed"}  # what datasets reads
        assert "synthpipe" in front["tags"]
        assert "| judge | train | 9 |" in card and "| pushed | train | 9 |" in card
        assert "1 row(s) failed" in card and "step `candidates_0`: 1" in card
        assert "OpenAILLM (judge-model)" in card and "`UltraFeedback`" in card
        assert "arXiv:2310.01377" in card  # the paper UltraFeedback implements

        pipeline = yaml.safe_load(files["pipeline.yaml"])["pipeline"]
        assert [s["name"] for s in pipeline["steps"]] == ["load_data_from_dicts_0", "candidates_0", "judge",
                                                          "keep", "pushed"]
        assert {"from": "keep", "to": "pushed"} in pipeline["connections"]
        assert "pipeline 'hub-program' finished" in files["pipeline.log"].decode()
        for name, content in files.items():  # no secret went up, nor into the output
            assert TOKEN.encode() not in content and LLM_KEY.encode() not in content, name
        assert TOKEN not in output and LLM_KEY not in output


def test_a_refused_token_is_a_clear_error_that_does_not_show_the_token(server, tmp_path):
    bad = "hf_wrong_token_SHOULD_NOT_APPEAR"
    with HubServer(token=TOKEN) as hub:
        result, output = _run(hub, server.base_url, tmp_path, bad, "badtoken")
        assert REPO not in hub.repos  # nothing was created with a refused token
    assert result["error"].startswith("HubPushError: push_to_hub('standin-user/demo'): creating the dataset repo")
    assert "refused the token (401)" in result["error"]
    assert bad not in output


def test_the_push_to_hub_step_fails_the_run_naming_the_step(tmp_path):
    bad = "hf_wrong_token_SHOULD_NOT_APPEAR"
    code = (
        "from synthpipe.pipeline import Pipeline\n"
        "from synthpipe.steps import LoadDataFromDicts, PushToHub\n"
        f"with Pipeline(name='push-step', cache_dir={str(tmp_path / 'cache')!r}) as p:\n"
        "    LoadDataFromDicts(data=[{'a': 1}]) >> PushToHub(name='pusher', repo_id='standin-user/x', "
        f"token={bad!r})\n"
        "try:\n    p.run()\nexcept Exception as exc:\n    print('ERROR', type(exc).__name__, exc)\n")
    with HubServer(token=TOKEN) as hub:
        env = {**os.environ, **hub.env(tmp_path / "hf"), "PYTHONPATH": python_path(TESTS.parent / "src")}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=200)
    out = proc.stdout + proc.stderr
    error = next(line for line in proc.stdout.splitlines() if line.startswith("ERROR"))
    assert "step 'pusher'" in error and "pushing 1 rows to dataset repo 'standin-user/x' failed" in error, out
    assert "401" in error
    assert bad not in out


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_stand_in_answers_what_it_does_not_implement_with_501_and_refuses_missing_uploads():
    with HubServer(token=TOKEN) as hub:
        auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        status, _ = _post(f"{hub.url}/api/repos/create", json.dumps({"name": "m", "type": "model"}).encode(), auth)
        assert status == 501
        status, _ = _post(f"{hub.url}/api/models/a/b/commit/main", b"", auth)
        assert status == 501 and hub.unhandled == ["POST /api/models/a/b/commit/main"]
        assert _post(f"{hub.url}/api/repos/create", json.dumps({"name": "d", "type": "dataset"}).encode(),
                     auth)[0] == 200
        commit = b"\n".join(json.dumps(x).encode() for x in [
            {"key": "header", "value": {"summary": "s"}},
            {"key": "lfsFile", "value": {"path": "a.parquet", "algo": "sha256", "oid": "0" * 64, "size": 3}}])
        status, body = _post(f"{hub.url}/api/datasets/standin-user/d/commit/main", commit,
                             {**auth, "Content-Type": "application/x-ndjson"})
        assert status == 422 and "never uploaded" in body["error"]
        assert hub.files("standin-user/d") == {}
        status, _ = _post(f"{hub.url}/api/datasets/standin-user/d/commit/main", commit,
                          {"Authorization": "Bearer nope", "Content-Type": "application/x-ndjson"})
        assert status == 401


def test_train_test_split_splits_every_leaf():
    from datasets import Dataset, DatasetDict

    from synthpipe.distiset import Distiset

    distiset = Distiset({"a": DatasetDict({"train": Dataset.from_dict({"x": list(range(10))})}),
                         "b": DatasetDict({"train": Dataset.from_dict({"y": list(range(20))})})})
    split = distiset.train_test_split(train_size=0.8, seed=3)
    assert split is distiset
    assert {n: {s: d.num_rows for s, d in dd.items()} for n, dd in split.items()} == {
        "a": {"train": 8, "test": 2}, "b": {"train": 16, "test": 4}}
    assert sorted(list(split["a"]["train"]["x"]) + list(split["a"]["test"]["x"])) == list(range(10))
    with pytest.raises(ValueError, match="train_size must be a fraction"):
        distiset.train_test_split(train_size=1.5)


def test_a_failed_upload_is_a_clear_error_naming_the_config(tmp_path):
    code = (
        "from datasets import Dataset, DatasetDict\n"
        "from synthpipe.distiset import Distiset\n"
        "d = Distiset({'first': DatasetDict({'train': Dataset.from_dict({'a': [1, 2]})}),"
        " 'second': DatasetDict({'train': Dataset.from_dict({'b': [3]})})})\n"
        "try:\n    d.push_to_hub('standin-user/failing', token='hf_standin_token')\n"
        "except Exception as exc:\n    print('ERROR', type(exc).__name__, exc)\n")
    with HubServer(token=TOKEN) as hub:
        hub.fail(r"^POST /api/datasets/standin-user/failing/commit/", status=400, times=10)
        env = {**os.environ, **hub.env(tmp_path / "hf"), "PYTHONPATH": python_path(TESTS.parent / "src")}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=200)
        arrived = hub.files("standin-user/failing")
    error = proc.stdout[proc.stdout.find("ERROR"):] if "ERROR" in proc.stdout else proc.stdout + proc.stderr
    assert error.startswith("ERROR HubPushError push_to_hub('standin-user/failing'): uploading config 'first' "
                            "failed"), error
    assert "injected failure" in error  # what the Hub said is in the message
    assert arrived == {}  # nothing was committed


def test_a_private_repo_is_hidden_from_readers_without_the_token():
    with HubServer(token=TOKEN) as hub:
        auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        body = json.dumps({"name": "p", "type": "dataset", "visibility": "private"}).encode()
        assert _post(f"{hub.url}/api/repos/create", body, auth)[0] == 200
        for headers, expected in (({}, 404), ({"Authorization": f"Bearer {TOKEN}"}, 200)):
            request = urllib.request.Request(f"{hub.url}/api/datasets/standin-user/p", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status == expected
