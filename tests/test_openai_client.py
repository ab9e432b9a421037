"""The HTTP side of the LLM layer: flow control (limits.py) and the OpenAI-format client,
against a real OpenAI-compatible server on 127.0.0.1 (tests/llm_server.py)."""

from __future__ import annotations

import asyncio
import json
import pickle
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")

from synthpipe.models.limits import AdaptiveConcurrency, PauseGate, RateBudget
from synthpipe.models.openai_client import (
    OpenAICompatibleClient,
    RequestFailed,
    RetryPolicy,
    estimate_tokens,
    parse_retry_after,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import LLMTestServer, ServerConfig, instance_of  # noqa: E402

API_KEY = "sk-test-SECRET-0123456789abcdef"
FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05, timeout=5.0)


def run(coro: Any, timeout: float = 20.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def chat_payload(text: str, **kwargs: Any) -> dict[str, Any]:
    return {"model": "test-model", "messages": [{"role": "user", "content": text}], **kwargs}


@pytest.fixture(scope="module")
def _server():
    with LLMTestServer(latency=0.0) as server:
        yield server


@pytest.fixture
def server(_server: LLMTestServer):
    defaults = ServerConfig()
    _server.configure(**{k: getattr(defaults, k) for k in defaults.__dataclass_fields__})
    _server.reset()
    yield _server


def make_client(server: LLMTestServer, **kwargs: Any) -> OpenAICompatibleClient:
    kwargs.setdefault("retry", FAST)
    return OpenAICompatibleClient(server.base_url, API_KEY, **kwargs)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


# ---------------------------------------------------------------- limiter unit tests


@pytest.mark.timeout(10)
def test_concurrency_admits_up_to_limit_in_arrival_order():
    async def main() -> None:
        limiter = AdaptiveConcurrency(2)
        order: list[int] = []
        release = asyncio.Event()

        async def worker(i: int) -> None:
            async with limiter.slot():
                order.append(i)
                await release.wait()

        tasks = [asyncio.create_task(worker(i)) for i in range(5)]
        await asyncio.sleep(0.01)
        assert limiter.in_flight == 2 and limiter.waiting == 3 and order == [0, 1]
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert order == [0, 1, 2, 3, 4] and limiter.in_flight == 0

    run(main())


@pytest.mark.timeout(10)
def test_concurrency_cancelled_waiter_does_not_leak_a_slot():
    async def main() -> None:
        limiter = AdaptiveConcurrency(1)
        await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        limiter.release()  # may hand the slot to the cancelled waiter: it must pass it on
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter.in_flight == 0
        await asyncio.wait_for(limiter.acquire(), 1)
        assert limiter.in_flight == 1

    run(main())


@pytest.mark.timeout(10)
def test_overload_halves_once_per_window_and_ignores_stale_answers():
    t = FakeTime()
    limiter = AdaptiveConcurrency(16, min_concurrency=3, window=0.5, clock=t.clock)
    started = t.now
    assert limiter.on_overload(started) and limiter.limit == 8
    # the rest of the same burst: same moment, and started before the cut
    assert not any(limiter.on_overload(started) for _ in range(20)) and limiter.limit == 8
    t.now += 1.0
    assert not limiter.on_overload(started)  # sent before the last cut: says nothing new
    assert limiter.limit == 8
    assert limiter.on_overload(t.now - 0.1) and limiter.limit == 4
    t.now += 1.0
    assert limiter.on_overload() and limiter.limit == 3  # never below min
    t.now += 1.0
    assert not limiter.on_overload() and limiter.limit == 3


@pytest.mark.timeout(10)
def test_success_grows_additively_up_to_max():
    t = FakeTime()
    limiter = AdaptiveConcurrency(6, clock=t.clock)
    limiter.on_overload()
    assert limiter.limit == 3
    for _ in range(2):
        limiter.on_success()
    assert limiter.limit == 3
    limiter.on_success()
    assert limiter.limit == 4  # +1 after `limit` successes
    for _ in range(100):
        limiter.on_success()
    assert limiter.limit == 6


@pytest.mark.timeout(10)
def test_lower_limit_waits_for_in_flight_to_drain():
    async def main() -> None:
        limiter = AdaptiveConcurrency(4, window=0.0)
        for _ in range(4):
            await limiter.acquire()
        limiter.on_overload()
        assert limiter.limit == 2 and limiter.in_flight == 4
        late = asyncio.create_task(limiter.acquire())
        limiter.release()
        limiter.release()
        await asyncio.sleep(0.01)
        assert not late.done()  # 2 in flight, limit 2
        limiter.release()
        await asyncio.wait_for(late, 1)
        assert limiter.in_flight == 2

    run(main())


@pytest.mark.timeout(10)
def test_rate_budget_reserves_in_order_and_sleeps_the_computed_delay():
    t = FakeTime()
    budget = RateBudget(requests_per_minute=60, burst_seconds=2, clock=t.clock, sleep=t.sleep)
    assert [budget.reserve() for _ in range(4)] == [0.0, 0.0, 1.0, 2.0]
    t.now += 10  # refills up to the burst capacity only
    assert [budget.reserve() for _ in range(3)] == [0.0, 0.0, 1.0]

    t2 = FakeTime()
    tokens = RateBudget(tokens_per_minute=6000, burst_seconds=1, clock=t2.clock, sleep=t2.sleep)  # 100/s
    run(tokens.acquire(100))
    assert t2.slept == []
    run(tokens.acquire(50))
    assert t2.slept == [pytest.approx(0.5)]
    tokens.adjust(50, 10)  # used fewer tokens than estimated: 40 back
    assert tokens.reserve(40) == 0.0


@pytest.mark.timeout(10)
def test_rate_budget_cancelled_waiter_gives_its_reservation_back():
    t = FakeTime()

    async def main() -> None:
        sleeping = asyncio.Event()

        async def sleep_forever(seconds: float) -> None:
            sleeping.set()
            await asyncio.Event().wait()

        budget = RateBudget(requests_per_minute=60, burst_seconds=1, clock=t.clock, sleep=sleep_forever)
        await budget.acquire()
        waiter = asyncio.create_task(budget.acquire())
        await asyncio.wait_for(sleeping.wait(), 5)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert budget.reserve() == 1.0  # not 2.0

    run(main())


@pytest.mark.timeout(10)
def test_pause_gate_extends_only_and_is_clamped():
    t = FakeTime()
    gate = PauseGate(max_pause=5.0, clock=t.clock, sleep=t.sleep)
    run(gate.wait())
    assert t.slept == []
    gate.pause_for(2.0)
    gate.pause_for(1.0)  # shorter: no effect
    assert gate.remaining() == pytest.approx(2.0)
    run(gate.wait())
    assert t.slept == [pytest.approx(2.0)] and gate.remaining() == 0
    gate.pause_for(3600)
    assert gate.remaining() == pytest.approx(5.0)


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "150", "retry-after": "9"}) == 0.15
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0) == 10.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_estimate_tokens():
    assert estimate_tokens(chat_payload("x" * 400, max_tokens=10, n=2)) == 101 + 20
    assert estimate_tokens({"input": ["abcd" * 10, "abcd"]}) == 12


def test_server_builds_schema_instances():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 3, "maxLength": 5},
            "age": {"type": "integer", "minimum": 18},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}, "minItems": 2},
            "kind": {"enum": ["a", "b"]},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "number"}]},
            "ok": {"type": "boolean"},
        },
        "required": ["name", "age"],
        "$defs": {"Tag": {"type": "object", "properties": {"v": {"type": "string"}}}},
    }
    value = instance_of(schema, "hi")
    assert value == {"name": "hix", "age": 18, "tags": [{"v": "hi"}] * 2, "kind": "a", "maybe": 0.0, "ok": True}


# ---------------------------------------------------------------- client against the server


@pytest.mark.timeout(20)
def test_chat_success_usage_and_pass_through(server: LLMTestServer):
    async def main() -> tuple[dict, dict]:
        async with make_client(server) as client:
            one = await client.chat(
                chat_payload("hello there world", temperature=0.3, seed=7, max_tokens=3, top_p=0.9, stop=["x"])
            )
            many = await client.chat(chat_payload("pick one", n=3))
            return one, many

    one, many = run(main())
    assert one["object"] == "chat.completion" and one["model"] == "test-model" and one["id"]
    assert one["choices"][0]["message"]["content"] == "echo: hello there"
    assert one["choices"][0]["finish_reason"] == "length"
    assert one["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert [c["message"]["content"] for c in many["choices"]] == [
        "echo: pick one",
        "echo 1: pick one",
        "echo 2: pick one",
    ]
    assert [c["finish_reason"] for c in many["choices"]] == ["stop"] * 3
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert first["headers"]["Content-Type"].startswith("application/json")
    body = first["body"]
    assert (body["temperature"], body["seed"], body["max_tokens"], body["top_p"], body["stop"]) == (
        0.3,
        7,
        3,
        0.9,
        ["x"],
    )


@pytest.mark.timeout(20)
def test_structured_output_embeddings_and_completions(server: LLMTestServer):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}

    async def main() -> tuple[dict, ...]:
        async with make_client(server, headers={"X-Extra": "1"}) as client:
            structured = await client.chat(chat_payload("rate it", response_format=fmt))
            obj = await client.chat(chat_payload("any", response_format={"type": "json_object"}))
            bad = await client.chat(chat_payload("[[badjson]] rate", response_format=fmt))
            emb = await client.embeddings({"model": "e", "input": ["a b", "c"], "dimensions": 4})
            emb2 = await client.embeddings({"model": "e", "input": "a b"})
            text = await client.completions({"model": "m", "prompt": "say hi", "max_tokens": 2})
            return structured, obj, bad, emb, emb2, text

    structured, obj, bad, emb, emb2, text = run(main())
    assert set(json.loads(structured["choices"][0]["message"]["content"])) == {"answer", "score"}
    assert json.loads(obj["choices"][0]["message"]["content"]) == {"text": "echo: any"}
    with pytest.raises(ValueError):
        json.loads(bad["choices"][0]["message"]["content"])
    assert [len(d["embedding"]) for d in emb["data"]] == [4, 4] and emb["usage"]["prompt_tokens"] == 3
    assert len(emb2["data"][0]["embedding"]) == 8
    assert emb2["data"][0]["embedding"][:4] != emb["data"][0]["embedding"]  # other dimension, other vector
    assert text["choices"][0]["text"] == "echo: say" and text["choices"][0]["finish_reason"] == "length"
    assert server.last_request["headers"]["X-Extra"] == "1"


@pytest.mark.timeout(20)
def test_429_retry_after_is_honoured_and_pauses_the_endpoint(server: LLMTestServer):
    server.configure(retry_after=0.3)
    prompt = "slow down [[429:2]]"

    async def main() -> tuple[dict, float, float]:
        async with make_client(server) as client:
            start = time.monotonic()
            first = asyncio.create_task(client.chat(chat_payload(prompt)))
            for _ in range(500):  # until the first 429 has arrived and paused the endpoint (<= 5 s)
                if client.limits.gate.remaining() > 0.1:
                    break
                await asyncio.sleep(0.01)
            paused_at = time.monotonic() - start
            await client.chat(chat_payload("innocent bystander"))
            other_done = time.monotonic() - start - paused_at
            answer = await first
            return answer, other_done, time.monotonic() - start

    answer, other_done, total = run(main())
    assert answer["choices"][0]["message"]["content"] == f"echo: {prompt}"
    assert server.attempts(prompt) == 3
    assert total >= 0.6  # two Retry-After waits of 0.3 s
    assert other_done >= 0.1  # the bystander waited for the rest of the pause too
    assert server.attempts("innocent bystander") == 1


@pytest.mark.timeout(20)
@pytest.mark.parametrize("style", ["ms", "date"])
def test_retry_after_header_styles(server: LLMTestServer, style: str):
    server.configure(retry_after=0.2 if style == "ms" else 1.0, retry_after_style=style)

    async def main() -> float:
        async with make_client(server) as client:
            start = time.monotonic()
            await client.chat(chat_payload(f"[[503:1]] {style}"))
            return time.monotonic() - start

    elapsed = run(main())
    assert server.attempts(f"[[503:1]] {style}") == 2
    assert elapsed >= (0.18 if style == "ms" else 0.001)  # an HTTP date has 1 s resolution


@pytest.mark.timeout(20)
def test_5xx_retried_then_raised_with_attempts_and_status(server: LLMTestServer):
    async def main() -> tuple[dict, RequestFailed]:
        async with make_client(server, retry=RetryPolicy(max_retries=2, base_delay=0.01, timeout=5)) as client:
            ok = await client.chat(chat_payload("[[500:2]] flaky"))
            with pytest.raises(RequestFailed) as info:
                await client.chat(chat_payload("[[503:always]] down"))
            return ok, info.value

    ok, failed = run(main())
    assert ok["choices"][0]["message"]["content"] == "echo: [[500:2]] flaky"
    assert server.attempts("[[500:2]] flaky") == 3
    assert (failed.status, failed.attempts, failed.retryable, failed.kind) == (503, 3, True, "http")
    assert server.attempts("[[503:always]] down") == 3
    assert "HTTP 503" in str(failed) and "3 attempts" in str(failed) and "injected fault 503" in str(failed)
    assert failed.url == server.base_url + "/chat/completions"


@pytest.mark.timeout(20)
def test_hang_times_out_and_is_retried(server: LLMTestServer):
    policy = RetryPolicy(max_retries=1, base_delay=0.01, timeout=0.3)

    async def main() -> tuple[dict, RequestFailed, float]:
        async with make_client(server, retry=policy) as client:
            recovered = await client.chat(chat_payload("[[hang:1]] once"))
            start = time.monotonic()
            with pytest.raises(RequestFailed) as info:
                await client.chat(chat_payload("[[hang]] forever"))
            return recovered, info.value, time.monotonic() - start

    recovered, failed, elapsed = run(main())
    assert recovered["choices"][0]["message"]["content"] == "echo: [[hang:1]] once"
    assert server.attempts("[[hang:1]] once") == 2
    assert (failed.kind, failed.status, failed.attempts, failed.retryable) == ("timeout", None, 2, True)
    assert "no answer within 0.3s" in str(failed)
    assert server.attempts("[[hang]] forever") == 2
    assert 0.55 <= elapsed < 5
    deadline = time.monotonic() + 5
    while server.in_flight and time.monotonic() < deadline:  # the server notices the client left
        time.sleep(0.02)
    assert server.in_flight == 0


@pytest.mark.timeout(20)
def test_dropped_connection_is_retried(server: LLMTestServer):
    async def main() -> dict:
        async with make_client(server) as client:
            await client.chat(chat_payload("warm the pool"))
            return await client.chat(chat_payload("[[drop:2]] dropped"))

    answer = run(main())
    assert answer["choices"][0]["message"]["content"] == "echo: [[drop:2]] dropped"
    assert server.attempts("[[drop:2]] dropped") == 3 and server.stats()["dropped"] == 2


@pytest.mark.timeout(20)
def test_client_error_is_not_retried(server: LLMTestServer):
    async def main() -> RequestFailed:
        async with make_client(server) as client:
            with pytest.raises(RequestFailed) as info:
                await client.chat(chat_payload("[[400]] bad request"))
            return info.value

    failed = run(main())
    assert (failed.status, failed.attempts, failed.retryable) == (400, 1, False)
    assert server.attempts("[[400]] bad request") == 1
    assert "not retryable" in str(failed) and "invalid_request" in str(failed)
    assert failed.body and "injected fault 400" in failed.body
    again = pickle.loads(pickle.dumps(failed))
    assert (type(again), str(again), again.status, again.attempts, again.retryable) == (
        RequestFailed,
        str(failed),
        400,
        1,
        False,
    )


@pytest.mark.timeout(20)
def test_api_key_never_in_repr_or_errors(server: LLMTestServer):
    closed_port = socket.socket()
    closed_port.bind(("127.0.0.1", 0))
    port = closed_port.getsockname()[1]
    closed_port.close()
    errors: list[RequestFailed] = []

    async def main() -> None:
        policy = RetryPolicy(max_retries=1, base_delay=0.01, timeout=0.3)
        async with make_client(server, retry=policy) as client:
            assert API_KEY not in repr(client) and "***" in repr(client)
            for prompt in (f"[[400]] echo {API_KEY}", f"[[503]] {API_KEY}", "[[hang]] key"):
                with pytest.raises(RequestFailed) as info:
                    await client.chat(chat_payload(prompt))
                errors.append(info.value)
        async with OpenAICompatibleClient(f"http://127.0.0.1:{port}/v1", API_KEY, retry=policy) as nowhere:
            with pytest.raises(RequestFailed) as info:
                await nowhere.chat(chat_payload("anyone?"))
            errors.append(info.value)

    run(main())
    assert [e.kind for e in errors] == ["http", "http", "timeout", "connection"]
    assert errors[-1].retryable and errors[-1].attempts == 2
    for error in errors:
        for text in (str(error), repr(error), error.body or "", repr(error.__dict__), repr(error.__cause__)):
            assert API_KEY not in text
    assert "***" in str(errors[0])  # the server echoed it; we redacted it


@pytest.mark.timeout(30)
def test_concurrency_never_exceeds_the_limit(server: LLMTestServer):
    server.configure(latency=0.05)

    async def main() -> list[dict]:
        async with make_client(server, max_concurrency=8) as client:
            return await asyncio.gather(*(client.chat(chat_payload(f"q{i}")) for i in range(120)))

    answers = run(main())
    assert [a["choices"][0]["message"]["content"] for a in answers] == [f"echo: q{i}" for i in range(120)]
    stats = server.stats()
    assert stats["total_requests"] == 120
    assert 4 <= stats["max_in_flight"] <= 8


@pytest.mark.timeout(30)
def test_aimd_shrinks_under_a_429_storm_and_recovers(server: LLMTestServer):
    server.configure(latency=0.02, fail_rate=1.0, fail_status=429, retry_after=None)
    policy = RetryPolicy(max_retries=4, base_delay=0.02, max_delay=0.1, timeout=5)

    async def main() -> tuple[list[Any], int, int, int]:
        async with make_client(server, max_concurrency=32, min_concurrency=4, retry=policy) as client:
            limiter = client.limits.concurrency
            storm = await asyncio.gather(
                *(client.chat(chat_payload(f"s{i}")) for i in range(64)), return_exceptions=True
            )
            after_storm = limiter.limit
            server.configure(fail_rate=0.0)
            server.reset()
            await asyncio.gather(*(client.chat(chat_payload(f"r{i}")) for i in range(100)))
            return storm, after_storm, limiter.limit, limiter.cuts

    storm, after_storm, after_recovery, cuts = run(main())
    assert all(isinstance(e, RequestFailed) and e.status == 429 and e.attempts == 5 for e in storm)
    assert cuts >= 2 and 4 <= after_storm <= 8
    assert after_recovery > after_storm
    assert server.stats()["max_in_flight"] <= after_recovery


@pytest.mark.timeout(20)
def test_rate_budget_spaces_requests(server: LLMTestServer):
    async def main() -> float:
        # 120/min = 2/s, burst of 10 s = 20 requests at once; the 22nd waits about 1 s.
        async with make_client(server, requests_per_minute=120) as client:
            start = time.monotonic()
            await asyncio.gather(*(client.chat(chat_payload(f"b{i}")) for i in range(22)))
            return time.monotonic() - start

    elapsed = run(main())
    assert 0.9 <= elapsed < 5


@pytest.mark.timeout(20)
def test_client_survives_a_new_event_loop_and_refuses_after_close(server: LLMTestServer):
    client = make_client(server)
    first = run(client.chat(chat_payload("loop one")))
    second = run(client.chat(chat_payload("loop two")))  # the first loop is closed now
    assert first["choices"][0]["message"]["content"] == "echo: loop one"
    assert second["choices"][0]["message"]["content"] == "echo: loop two"
    run(client.close())
    with pytest.raises(RuntimeError, match="closed"):
        run(client.chat(chat_payload("too late")))


@pytest.mark.timeout(20)
def test_server_stops_quickly_with_hung_requests():
    import threading

    before = {t.ident for t in threading.enumerate()}
    with LLMTestServer() as server:

        async def main() -> None:
            async with OpenAICompatibleClient(server.base_url, retry=RetryPolicy(max_retries=0, timeout=30)) as c:
                tasks = [asyncio.create_task(c.chat(chat_payload(f"[[hang]] {i}"))) for i in range(5)]
                await asyncio.sleep(0.2)
                start = time.monotonic()
                await asyncio.to_thread(server.stop)
                stop_took = time.monotonic() - start
                results = await asyncio.gather(*tasks, return_exceptions=True)
                assert all(isinstance(r, RequestFailed) for r in results), results
                assert stop_took < 3

        run(main())
    assert {t.ident for t in threading.enumerate()} <= before
