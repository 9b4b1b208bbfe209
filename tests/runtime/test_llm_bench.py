"""bench/llm_serving's client and figures, and its two baseline servers (bench/llm_servers)
on a tiny random llama: what the benchmark's comparison rests on."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.factories import ROOT

MAX_TOKENS = 8


def _load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("llm_serving", ROOT / "bench" / "llm_serving.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def record(
    sent: float,
    text_at: list[float],
    *,
    outcome: str = "done",
    chunks: int | None = None,
    usage: int | None = None,
) -> Any:
    return bench.RequestRecord(
        sent=sent,
        text_at=text_at,
        chunks=len(text_at) if chunks is None else chunks,
        usage_tokens=usage,
        outcome=outcome,
    )


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (
            [
                record(0.0, [0.1, 0.2, 0.3], usage=4),
                record(0.5, [0.6, 0.7], outcome="cut"),
                record(1.0, [1.1, 1.2, 1.3], outcome="failed"),
            ],
            {
                "tokens": 6,
                "text_chunks": 5,
                "tokens_per_s": 3.0,
                "completed": 1,
                "cut": 1,
                "failures": 1,
            },
        ),
        (
            [record(0.0, [0.1, 0.15, 0.35, 0.45, 0.5])],
            {"ttft_p50_ms": 100, "ttft_p99_ms": 100, "itl_p50_ms": 100, "itl_p99_ms": 200},
        ),
        (
            [record(0.0, [0.1]), record(1.0, [], outcome="cut")],
            {"ttft_p99_ms": 100, "waiting_at_end": 1, "longest_wait_ms": 1000, "cut": 1},
        ),
        (
            [record(0.0, [], outcome="failed")],
            {"tokens": 0, "failures": 1, "waiting_at_end": 0},
        ),
    ],
    ids=[
        "tokens count done and cut requests, usage first, and never failed ones",
        "TTFT is the first text chunk and ITL the gaps after it",
        "a request still waiting at the end is no TTFT but says how long it waited",
        "a failed request counts as a failure and nothing else",
    ],
)
def test_figures_of_a_cell(records: list[Any], expected: dict[str, float]) -> None:
    cell = bench.summarize(records, streams=2, started=0.0, ended=2.0)
    for name, value in expected.items():
        assert getattr(cell, name) == pytest.approx(value), name


@pytest.mark.parametrize(
    ("line", "done", "chunks", "text", "usage"),
    [
        (b"data: [DONE]\n", True, 0, "", None),
        (b'data: {"choices": [{"text": " hi", "index": 0}]}\n', False, 1, " hi", None),
        (b'data: {"choices": [{"text": "", "index": 0}]}\n', False, 1, "", None),
        (b'data: {"choices": [], "usage": {"completion_tokens": 7}}\n', False, 0, "", 7),
        (b"\n", False, 0, "", None),
        (b": keep-alive\n", False, 0, "", None),
    ],
    ids=[
        "DONE ends the stream",
        "a chunk with text is a token and a text arrival",
        "a chunk with no text is a token but no text arrival",
        "the usage chunk gives the token count",
        "a blank separator is nothing",
        "a comment is nothing",
    ],
)
def test_reading_events(line: bytes, done: bool, chunks: int, text: str, usage: int | None) -> None:
    seen = bench.RequestRecord(sent=0.0)
    assert bench.read_event(line, seen, 1.0) is done
    assert (seen.chunks, seen.text, seen.usage_tokens) == (chunks, text, usage)
    assert seen.text_at == ([1.0] if text else [])


@pytest.mark.parametrize(
    "line",
    [b'data: {"error": {"message": "boom"}}\n', b"data: not json\n"],
    ids=["an error event fails the request", "a line that is not JSON fails the request"],
)
def test_bad_events_fail_the_request(line: bytes) -> None:
    with pytest.raises(ValueError, match=r"error event|Expecting value"):
        bench.read_event(line, bench.RequestRecord(sent=0.0), 1.0)


def test_a_server_that_is_not_there_is_all_failures() -> None:
    port = bench.free_port()
    cell, records = asyncio.run(
        bench.run_cell(
            f"http://127.0.0.1:{port}",
            ["hello"],
            streams=2,
            seconds=0.3,
            max_tokens=MAX_TOKENS,
            stagger_s=0,
        )
    )
    assert cell.failures > 0
    assert cell.tokens == 0
    assert all("ClientConnectorError" in r.error for r in records if r.outcome == "failed")


def test_ours_is_served_as_the_operator_renders_a_one_replica_deployment(
    tmp_path: Path,
) -> None:
    from modelplane_runtime.contract import SERVE_IMPORT_PATH, ServeArgs  # noqa: PLC0415

    config = bench.ours_config(tmp_path, 8123, threads=2)
    (application,) = config["applications"]
    args = ServeArgs.model_validate(application["args"])
    (deployment,) = application["deployments"]
    assert application["import_path"] == SERVE_IMPORT_PATH
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    assert args.model_uri == f"file://{tmp_path}"
    assert args.model_name == bench.MODEL_NAME
    assert (args.dtype, args.threads) == ("fp32", 2)
    assert args.generation is not None
    assert args.generation.max_sequences == 32
    assert deployment["num_replicas"] == 1
    assert deployment["ray_actor_options"]["num_cpus"] == 2
    # 32 streams are taken in, not refused.
    assert deployment["max_ongoing_requests"] >= 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(bench.make_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="module")
def servers(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Both baselines, started at once (their imports take most of the time)."""
    started = [
        bench.Baseline.spawn(kind, tiny, workdir=tmp_path_factory.mktemp(kind), threads=1)
        for kind in ("one", "static")
    ]
    try:
        for server in started:
            server.wait_ready()
        yield {server.kind: server.url for server in started}
    finally:
        for server in started:
            server.stop()


@pytest.fixture(params=["one", "static"])
def server(request: pytest.FixtureRequest, servers: dict[str, str]) -> tuple[str, str]:
    kind = str(request.param)
    return kind, servers[kind]


def greedy(model_dir: Path, prompt: str) -> str:
    """What transformers' generate answers alone, greedily: the reference text."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False)
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))


def stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:
        answer: dict[str, int] = json.loads(response.read())
        return answer


def test_a_cell_streams_every_token_and_ends_on_time(server: tuple[str, str], tiny: Path) -> None:
    kind, url = server
    prompts = bench.chat_prompts(tiny)
    before = stats(url)
    cell, records = asyncio.run(
        bench.run_cell(url, prompts, streams=4, seconds=2.0, max_tokens=MAX_TOKENS, stagger_s=0.2)
    )
    assert cell.failures == 0, cell.errors
    assert cell.completed >= 4
    assert cell.seconds < 2.5
    done = [r for r in records if r.outcome == "done"]
    # One chunk per generated token, and usage says the same.
    assert all(r.usage_tokens == r.chunks for r in done)
    assert all(0 < r.chunks <= MAX_TOKENS for r in done)
    assert cell.tokens == sum(r.tokens for r in records if r.outcome != "failed")
    assert cell.ttft_p50_ms > 0
    # Abandoned requests are dropped: the next request is answered.
    bench.settle(url)
    after = stats(url)
    largest = after["largest_batch"]
    assert after["requests"] > before["requests"]
    assert largest == 1 if kind == "one" else largest >= 2


def test_a_lone_request_streams_what_generate_answers(server: tuple[str, str], tiny: Path) -> None:
    _, url = server
    prompt = bench.chat_prompts(tiny)[3]
    seen = bench.RequestRecord(sent=0.0)
    asyncio.run(_send_one(url, bench.payload(prompt, MAX_TOKENS), seen))
    assert seen.outcome == "done", seen.error
    assert seen.text == greedy(tiny, prompt)


def test_a_bad_request_is_a_failure_in_openai_shape(server: tuple[str, str]) -> None:
    _, url = server
    seen = bench.RequestRecord(sent=0.0)
    body = {**bench.payload("hello", MAX_TOKENS), "temperature": 0.7}
    asyncio.run(_send_one(url, body, seen))
    assert seen.outcome == "failed"
    assert seen.error.startswith("HTTP 400")
    error = json.loads(seen.error.split(": ", 1)[1])["error"]
    assert error["param"] == "temperature"
    assert "greedily" in error["message"]


def test_an_unknown_model_is_404(server: tuple[str, str]) -> None:
    _, url = server
    body = json.dumps({**bench.payload("hello", MAX_TOKENS), "model": "gpt-4"}).encode()
    request = urllib.request.Request(
        f"{url}/v1/completions", data=body, headers={"content-type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    with caught.value as answer:
        assert answer.code == 404
        assert "gpt-4" in json.loads(answer.read())["error"]["message"]


async def _send_one(url: str, body: dict[str, Any], seen: Any) -> None:
    import aiohttp  # noqa: PLC0415

    async with aiohttp.ClientSession() as session:
        await bench.send(session, url, body, seen)
