"""Rows kept as their worker's bytes on the way through the coordinator (``runtime.packed``):
a batch that is one step's output whole is sent on as the very bytes the worker sent, without
unpickling a row; whatever has to read rows reads them, and every scheduling case gives the
same result as with plain rows."""

from __future__ import annotations

import pickle

import pytest

from fake_executor import RESUME_SHAPES, FakeExecutor, gen, glob, rows_of, run_isolation, step, tag
from synthpipe.runtime.contract import Dispatch
from synthpipe.runtime.packed import PackedRows
from synthpipe.runtime.scheduler import Scheduler
from synthpipe.runtime.scheduler.state import RowBuffer

pytestmark = [pytest.mark.timeout(60)]


def _packed(rows: list[dict]) -> PackedRows:
    return PackedRows(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL), len(rows))


def test_its_length_needs_no_unpickling_and_its_rows_read_as_a_list():
    rows = [{"i": i, "text": f"t{i}"} for i in range(5)]
    packed = _packed(rows)
    assert len(packed) == 5 and not packed.unpacked
    assert packed[1] == rows[1] and packed[1:3] == rows[1:3] and list(packed) == rows
    assert packed == rows and rows == packed and packed != rows[:4]


def test_pickled_again_it_is_the_workers_bytes_and_the_other_side_gets_a_plain_list():
    rows = [{"i": i, "text": f"t{i}"} for i in range(50)]
    packed = _packed(rows)
    message = pickle.dumps(("batch", 7, 0, 0, [packed]), protocol=pickle.HIGHEST_PROTOCOL)
    assert packed.data in message and not packed.unpacked  # sent on as it came
    _, _, _, _, inputs = pickle.loads(message)
    assert type(inputs[0]) is list and inputs[0] == rows


def test_a_row_buffer_hands_out_a_whole_output_as_it_came_and_cuts_the_others():
    first, second = _packed(rows_of(4)), _packed(rows_of(6)[4:])
    buffer = RowBuffer()
    buffer.extend(first)
    buffer.extend([])
    buffer.extend(second)
    assert len(buffer) == 6 and bool(buffer)
    assert buffer.take(4) is first  # exactly one output: untouched
    assert not first.unpacked and not second.unpacked
    assert list(buffer) == rows_of(6)[4:]
    assert buffer.take(1) == rows_of(6)[4:5] and len(buffer) == 1  # part of one: read
    assert buffer.take_all() == rows_of(6)[5:] and not buffer
    buffer.extend(_packed(rows_of(3)))
    buffer.extend(rows_of(5)[3:])
    assert buffer.take(5) == rows_of(5) and buffer.take(0) == []


def test_a_step_whose_input_is_one_upstream_batch_gets_its_bytes_unread():
    specs = [gen("gen", ("a",), batch_size=5), step("a", ("gen",), (), batch_size=5)]
    sched = Scheduler(specs)
    sched.start()
    sched.worker_ready("a", 0)
    [request] = sched.worker_ready("gen", 0)[:1]
    output = _packed(rows_of(5))
    actions = sched.batch_done("gen", 0, request.ticket, output, True)
    [dispatch] = [a for a in actions if isinstance(a, Dispatch)]
    assert dispatch.batch.inputs[0] is output and not output.unpacked


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", sorted(RESUME_SHAPES))
def test_every_shape_gives_the_same_result_with_packed_rows(shape, seed):
    case = RESUME_SHAPES[shape]

    def run(packed: bool) -> FakeExecutor:
        return FakeExecutor(case.specs, {"gen": rows_of(case.rows)}, case.fns(), seed=seed, packed=packed,
                            **case.kw).run()

    plain, packed = run(False), run(True)
    assert packed.finished == plain.finished and len(packed.fails) == len(plain.fails)
    for leaf, emits in plain.emits.items():
        assert [(e.seq, list(e.rows), e.keys) for e in packed.emits[leaf]] == [
            (e.seq, list(e.rows), e.keys) for e in emits]


def test_rebatching_a_global_step_and_isolating_a_poison_row_read_packed_rows():
    specs = [
        gen("gen", ("a",), batch_size=7),
        step("a", ("gen",), ("g",), batch_size=5, replicas=2),
        glob("g", ("a",), ("b",)),
        step("b", ("g",), (), batch_size=3),
    ]
    ex = FakeExecutor(specs, {"gen": rows_of(40)}, {"a": tag("a"), "b": tag("b")}, seed=3, packed=True).run()
    assert ex.finished == 1 and not ex.fails
    [whole] = ex.dispatched["g"]
    assert [r["i"] for r in whole.inputs[0]] == list(range(40))
    assert [r["i"] for e in ex.emits["b"] for r in e.rows] == list(range(40))
    isolated = run_isolation("two-poison-rows-in-one-batch", seed=2, replicas=2, packed=True)
    plain = run_isolation("two-poison-rows-in-one-batch", seed=2, replicas=2)
    assert [list(e.rows) for e in isolated.emits["b"]] == [list(e.rows) for e in plain.emits["b"]]
