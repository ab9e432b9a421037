"""Self-Instruct with complexity scores: user requests written from seed topics, each request
scored for complexity, then one row per request.

    python examples/self_instruct.py                                # offline (scripted model)
    python examples/self_instruct.py --local-model                  # the requests from a tiny local model
    python examples/self_instruct.py --base-url URL --model NAME    # a real endpoint

Self-Instruct is the method of Wang et al., 2022 (arXiv:2212.10560); the complexity scores are
Deita's (Liu et al., 2023, arXiv:2312.15685). ``SelfInstruct`` writes ``instructions`` (a list)
per seed, ``ComplexityScorer`` scores that list in one request into ``scores``, and
``ExpandColumns`` turns each row into one row per (instruction, score), splitting the token
statistics so that summing them later does not count a request several times.

Offline, the endpoint is synthpipe's test server on 127.0.0.1 (see examples/_offline.py): the
requests are scripted (three per seed, built from its words) and so are the scores (the longer
of a seed's requests scores higher). Every other part is real: the requests, the structured output asked for
and validated, parsing, failed rows, the Distiset. With ``--local-model`` the requests come from
``TransformersLLM`` on a tiny random-weight Llama built here (a real engine; **its text is noise**,
one request per line) and only the scores stay scripted: a random model cannot score.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from synthpipe.models import LLM, OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import ExpandColumns, LoadDataFromDicts
from synthpipe.steps.tasks import ComplexityScorer, SelfInstruct

SEEDS = ["budgeting for a first apartment", "training for a first 10k run", "keeping houseplants alive",
         "learning to read sheet music"]


def build_pipeline(llm: LLM, num_instructions: int, writer: LLM | None = None) -> Pipeline:
    with Pipeline(name="self-instruct", description="Self-Instruct requests scored for complexity") as pipeline:
        load = LoadDataFromDicts(data=[{"input": seed} for seed in SEEDS], batch_size=2)
        write = SelfInstruct(name="self_instruct", llm=writer or llm, num_instructions=num_instructions,
                             application_description="A personal coach that answers everyday questions.",
                             # a random-weight model is asked for lines, not for JSON through a grammar
                             use_default_structured_output=writer is None)
        score = ComplexityScorer(name="complexity", llm=llm)
        expand = ExpandColumns(name="one_row_per_instruction", columns={"instructions": "instruction",
                                                                        "scores": "complexity"},
                               split_statistics=True)
        load >> write >> score >> expand
    return pipeline


def _scripted(body: dict[str, Any]) -> str | None:
    """Requests built from the seed's words; a score that grows with a request's length."""
    from _offline import user_text, wants_json

    prompt = user_text(body)
    listed = re.findall(r"^\[\d+\] (.+)$", prompt, re.M)
    if listed:  # the complexity scorer's prompt lists the requests as "[n] text"
        by_length = sorted(listed, key=len)
        scores = [2 + 2 * by_length.index(text) for text in listed]  # 2, 4, 6 from shortest to longest
        if wants_json(body):
            return json.dumps({"scores": scores})
        return "\n".join(f"[{n}] Score: {s}" for n, s in enumerate(scores, 1))
    seed = next((s for s in SEEDS if s in prompt), "everyday life")
    count = int(m.group(1)) if (m := re.search(r"Write (\d+) different requests", prompt)) else 3
    requests = [f"What is one tip for {seed}?", f"Make me a week-by-week plan for {seed}.",
                f"Compare three approaches to {seed}, with their costs, risks and the time each takes."][:count]
    return json.dumps({"instructions": requests}) if wants_json(body) else "\n".join(requests)


def _tiny_local_model() -> LLM:
    from synthpipe.models import TransformersLLM
    from synthpipe.store.run_dir import default_cache_root
    from synthpipe.testing.tiny_models import build_tiny_llama

    print("requests come from a tiny random-weight Llama run by transformers: real engine, noise text")
    folder = default_cache_root() / "demo-models"
    return TransformersLLM(model=str(build_tiny_llama(folder / "tiny-llama")), device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="the model name the endpoint serves")
    parser.add_argument("--num-instructions", type=int, default=3)
    parser.add_argument("--local-model", action="store_true",
                        help="write the requests with a tiny local model (transformers); scores stay scripted")
    args = parser.parse_args()
    server = writer = None
    if args.base_url:
        llm = OpenAILLM(base_url=args.base_url, model=args.model or "default", max_concurrency=16)
    else:
        from _offline import scripted_server

        server = scripted_server(_scripted)
        llm = OpenAILLM(base_url=server.base_url, model="offline-scripted", max_concurrency=16)
        print(f"offline: synthpipe's test server at {server.base_url} (scripted requests and scores)")
        if args.local_model:
            writer = _tiny_local_model()
    try:
        distiset = build_pipeline(llm, args.num_instructions, writer).run(
            parameters={"self_instruct": {"llm": {"generation_kwargs": {"max_new_tokens": 24}}}} if writer else None)
    finally:
        if server is not None:
            server.stop()
    print(distiset)
    rows = distiset["default"]["train"].to_list()
    for row in rows:
        print(f"[{row['complexity']}] {row['instruction']}")
    print(f"{len(rows)} instructions from {len(SEEDS)} seeds; {len(distiset.failed_rows)} failed row(s)")
    print("run directory:", distiset.run_dir)


if __name__ == "__main__":
    main()
