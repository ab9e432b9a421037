"""The response cache's index on disk: lookups per request, and the promises it keeps when
the lines or the index are damaged (a miss, asked again, never an error)."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3

from synthpipe.store.responses import INDEX_SUFFIX, ResponseIndex, ResponseLog


def _fill(folder, answers, namespace="ns"):
    log = ResponseLog(folder)
    log.append(namespace, answers)
    log.close()


def test_answers_are_found_through_the_index_and_the_last_answer_of_a_key_wins(tmp_path):
    _fill(tmp_path, [(f"k{i}", {"text": f"a{i}"}) for i in range(100)])
    _fill(tmp_path, [("k7", {"text": "newer"})])
    assert (tmp_path / f"ns{INDEX_SUFFIX}").exists()
    index = ResponseIndex(tmp_path, "ns")
    assert len(index) == 100
    assert index.get("k3") == {"text": "a3"} and index.get("k7") == {"text": "newer"}
    assert index.get("missing") is None
    assert ResponseIndex(tmp_path, "other").get("k3") is None  # another model set-up


def test_a_damaged_or_torn_line_is_a_miss_never_an_error(tmp_path):
    _fill(tmp_path, [("a", "one"), ("b", "two"), ("c", "three")])
    lines = tmp_path / "ns.jsonl"
    raw = lines.read_bytes()
    at = raw.index(b'"two"')
    lines.write_bytes(raw[:at] + b'"tw\x00' + raw[at + 4:])  # the same length, no longer JSON
    index = ResponseIndex(tmp_path, "ns")
    assert index.get("a") == "one" and index.get("b") is None and index.get("c") == "three"
    with lines.open("ab") as fh:
        fh.write(b'{"k":"d","v":"fo')  # a writer killed mid-line
    assert ResponseIndex(tmp_path, "ns").get("d") is None
    _fill(tmp_path, [("e", "five")])  # the next append ends the torn line and stands alone
    index = ResponseIndex(tmp_path, "ns")
    assert index.get("e") == "five" and index.get("d") is None and index.get("a") == "one"


def test_lines_the_index_does_not_cover_are_still_found_and_indexed_by_the_next_run(tmp_path):
    _fill(tmp_path, [("a", "one")])
    with (tmp_path / "ns.jsonl").open("ab") as fh:  # appended, then killed before indexing
        fh.write((json.dumps({"k": "b", "v": "two"}, separators=(",", ":")) + "\n").encode())
    assert ResponseIndex(tmp_path, "ns").get("b") == "two"  # read from the tail past the index
    ResponseLog(tmp_path).close()  # a run opening the store catches the index up
    db = sqlite3.connect(tmp_path / f"ns{INDEX_SUFFIX}")
    assert db.execute("SELECT count(*) FROM answers").fetchone()[0] == 2
    db.close()


def test_a_damaged_index_is_rebuilt_from_the_lines_and_a_worker_reads_on(tmp_path):
    _fill(tmp_path, [(f"k{i}", i) for i in range(50)])
    index_file = tmp_path / f"ns{INDEX_SUFFIX}"
    index_file.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"ns{INDEX_SUFFIX}{suffix}").unlink(missing_ok=True)
    assert ResponseIndex(tmp_path, "ns").get("k10") == 10  # a worker: falls back to the lines
    ResponseLog(tmp_path).close()  # the coordinator makes the index again
    assert ResponseIndex(tmp_path, "ns").get("k49") == 49


def test_an_old_cache_without_an_index_is_indexed_once(tmp_path):
    lines = tmp_path / "ns.jsonl"
    lines.write_text("".join(json.dumps({"k": f"k{i}", "v": i}, separators=(",", ":")) + "\n" for i in range(120_000)))
    ResponseLog(tmp_path).close()
    index = ResponseIndex(tmp_path, "ns")
    assert index._tail == {}  # nothing left to hold in memory: all of it is in the index
    assert index.get("k0") == 0 and index.get("k119999") == 119_999


def _reader(folder, keys, out):
    index = ResponseIndex(folder, "ns")
    found = sum(1 for k in keys if index.get(k) == int(k[1:]))
    out.put(found)


def test_replicas_read_while_the_coordinator_appends_and_indexes(tmp_path):
    _fill(tmp_path, [(f"k{i}", i) for i in range(1000)])
    log = ResponseLog(tmp_path)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    readers = [ctx.Process(target=_reader, args=(tmp_path, [f"k{i}" for i in range(1000)], out)) for _ in range(3)]
    for proc in readers:
        proc.start()
    for n in range(1000, 3000, 50):
        log.append("ns", [(f"k{i}", i) for i in range(n, n + 50)])
        log.sync()
    found = [out.get(timeout=60) for _ in readers]
    for proc in readers:
        proc.join(timeout=30)
    log.close()
    assert found == [1000, 1000, 1000]
    index = ResponseIndex(tmp_path, "ns")
    assert len(index) == 3000 and index.get("k2999") == 2999
