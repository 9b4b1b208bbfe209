"""Language-model serving: output tokens/s, time to first token and inter-token latency
at 1, 8 and 32 concurrent streams, side by side on one model and one set of prompts.

    .venv/bin/python bench/llm_serving.py                        # all three, ~4 min on 2 cores
    .venv/bin/python bench/llm_serving.py --only one,static      # the baselines alone
    .venv/bin/python bench/llm_serving.py --ours-url http://127.0.0.1:8000   # ours, running
    .venv/bin/python bench/llm_serving.py --quick                # a tiny llama, seconds

(a) one     `transformers` `generate`, one request at a time, behind FastAPI (llm_servers.py);
(b) static  the same with plain static batching: requests arriving within 20 ms (at most
            32) are left-padded into one batch; later ones wait for the next batch;
(c) ours    the modelplane replica (`python -m modelplane_runtime serve`, continuous
            batching), started here unless --ours-url names one already running.

The model is SmolLM2-135M-Instruct (`builtin://smollm2-135m-instruct`, converted once by
the runtime into the storage cache), fp32, 2 torch threads everywhere; one server runs at
a time. Every server gets the same OpenAI `POST /v1/completions` stream requests
(chat-templated short questions, `max_tokens` 64, `temperature` 0, usage asked for) from
one closed-loop client per stream in this process. Streams start spread over the first
second (arrivals over time, not one burst), and each sends its next request when the last
one ends. A cell lasts `--seconds`; what is still streaming then is cut (the client
disconnects) and counted up to that moment, so a slow server's cell ends on time too.

- tokens/s: output tokens received in the cell / its length (usage when the server sends
  it, else one token per streamed chunk);
- TTFT: first chunk with text - request sent; ITL: gaps between later chunks with text;
  a TTFT marked >= may be higher: some request was still waiting for its first token at
  the end of the cell, longer than the figure;
- failures: an HTTP error, an error event, or a stream that ended without [DONE] (must
  be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from modelplane_harness.cluster import free_port
from modelplane_harness.loadgen import percentile

if TYPE_CHECKING:
    from modelplane.serving import LocalServer

HERE = Path(__file__).resolve().parent
MODEL_NAME = "bench"
"""The name every server serves the model under (llm_servers.MODEL_NAME too)."""
MODEL_URI = "builtin://smollm2-135m-instruct"
SERVERS = {
    "one": "(a) generate, one at a time",
    "static": "(b) static batching",
    "ours": "(c) modelplane",
}
FULL = {"streams": "1,8,32", "seconds": 20.0, "max_tokens": 64, "warmup": 3.0}
QUICK = {"streams": "1,4", "seconds": 3.0, "max_tokens": 8, "warmup": 1.0}
"""Defaults of the options left out, and --quick's."""
QUESTIONS = (
    "Explain how a rainbow forms.",
    "Write a short poem about the sea.",
    "Why do cats purr?",
    "Describe how bread is made.",
    "What are the benefits of regular exercise?",
    "How does a bicycle stay upright?",
    "Give three tips for learning a new language.",
    "What causes the seasons on Earth?",
    "Tell me a short story about a lost robot.",
    "How do bees make honey?",
    "Why is the sky blue?",
    "Describe a good morning routine.",
    "What is photosynthesis?",
    "How does a refrigerator keep food cold?",
    "Write a haiku about autumn leaves.",
    "What should I pack for a weekend hike?",
    "Explain what a computer program is to a child.",
    "Why do we need sleep?",
    "How do airplanes fly?",
    "Suggest a name for a friendly dragon and explain why.",
    "What makes a good friend?",
    "How are mountains formed?",
    "Describe the taste of a lemon.",
    "What is the water cycle?",
)


# --- what the clients saw --------------------------------------------------------------


@dataclass
class RequestRecord:
    """One request as its client saw it (times from `time.perf_counter()`)."""

    sent: float
    text_at: list[float] = field(default_factory=list)
    """When each chunk carrying text arrived."""
    chunks: int = 0
    """Chunks with a choice: one per token on a per-token stream."""
    text: str = ""
    usage_tokens: int | None = None
    outcome: str = "running"
    """done, cut (still streaming when the cell ended) or failed."""
    error: str = ""

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.chunks


@dataclass(frozen=True)
class CellStats:
    """One server at one concurrency."""

    streams: int
    seconds: float
    tokens: int
    text_chunks: int
    """Chunks with text: about `tokens` when a server streams token by token (ITL is
    per chunk, so a server that sends several tokens at once shows longer gaps)."""
    completed: int
    cut: int
    failures: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    waiting_at_end: int
    """Requests cut before their first token (not in the TTFT figures)."""
    longest_wait_ms: float
    """The longest of their waits: a TTFT figure below it may be higher in truth."""
    errors: tuple[str, ...] = ()
    mean_batch: float | None = None
    """Requests per `generate` batch (the baselines say; None for ours)."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def summarize(
    records: Sequence[RequestRecord], *, streams: int, started: float, ended: float
) -> CellStats:
    """The figures of one cell from its requests; `started`/`ended` bound the cell."""
    finished = [r for r in records if r.outcome in ("done", "cut")]
    ttfts = [(r.text_at[0] - r.sent) * 1000 for r in finished if r.text_at]
    itls = [
        (later - earlier) * 1000
        for r in finished
        for earlier, later in zip(r.text_at, r.text_at[1:], strict=False)
    ]
    waits = [(ended - r.sent) * 1000 for r in records if r.outcome == "cut" and not r.text_at]
    failed = [r for r in records if r.outcome == "failed"]
    return CellStats(
        streams=streams,
        seconds=ended - started,
        tokens=sum(r.tokens for r in finished),
        text_chunks=sum(len(r.text_at) for r in finished),
        completed=sum(r.outcome == "done" for r in records),
        cut=sum(r.outcome == "cut" for r in records),
        failures=len(failed),
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p99_ms=percentile(ttfts, 99),
        itl_p50_ms=percentile(itls, 50),
        itl_p99_ms=percentile(itls, 99),
        waiting_at_end=len(waits),
        longest_wait_ms=max(waits, default=0.0),
        errors=tuple(sorted({r.error for r in failed}))[:5],
    )


def read_event(line: bytes, record: RequestRecord, now: float) -> bool:
    """Fold one server-sent event line into `record`; True at `data: [DONE]`. An error
    event or a line that is not an OpenAI chunk fails the request (ValueError)."""
    text = line.decode().strip()
    if not text.startswith("data:"):
        return False  # blank separators, comments, other SSE fields
    data = text[len("data:") :].strip()
    if data == "[DONE]":
        return True
    event = json.loads(data)
    if not isinstance(event, dict) or "error" in event:
        raise ValueError(f"error event: {data[:200]}")
    for choice in event.get("choices") or ():
        record.chunks += 1
        if choice.get("text"):
            record.text_at.append(now)
            record.text += choice["text"]
    usage = event.get("usage")
    if usage:
        record.usage_tokens = int(usage["completion_tokens"])
    return False


# --- the load ----------------------------------------------------------------------------


def payload(prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def send(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], record: RequestRecord
) -> None:
    """One streamed completion into `record`; cancelling it leaves the record `cut`."""
    try:
        async with session.post(f"{url}/v1/completions", json=body) as response:
            if response.status != 200:
                record.outcome = "failed"
                record.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return
            async for line in response.content:
                if read_event(line, record, time.perf_counter()):
                    record.outcome = "done"
                    return
            record.outcome = "failed"
            record.error = "the stream ended without [DONE]"
    except asyncio.CancelledError:
        record.outcome = "cut"
        raise
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
        record.outcome = "failed"
        record.error = f"{type(exc).__name__}: {exc}"[:200]


async def stream(
    session: aiohttp.ClientSession,
    url: str,
    *,
    prompts: Sequence[str],
    first: int,
    delay_s: float,
    max_tokens: int,
    records: list[RequestRecord],
) -> None:
    """A closed-loop client: after `delay_s`, request after request until cancelled."""
    await asyncio.sleep(delay_s)
    for n in range(first, 10**9):
        record = RequestRecord(sent=time.perf_counter())
        records.append(record)
        await send(session, url, payload(prompts[n % len(prompts)], max_tokens), record)
        if record.outcome == "failed":
            await asyncio.sleep(0.05)  # no tight loop against a server that is down


async def run_cell(
    url: str,
    prompts: Sequence[str],
    *,
    streams: int,
    seconds: float,
    max_tokens: int,
    stagger_s: float,
) -> tuple[CellStats, list[RequestRecord]]:
    """`streams` clients for `seconds`, their starts spread over `stagger_s`."""
    records: list[RequestRecord] = []
    connector = aiohttp.TCPConnector(limit=streams)
    timeout = aiohttp.ClientTimeout(total=seconds + 120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(
                stream(
                    session,
                    url,
                    prompts=prompts,
                    first=i * 7,  # streams ask different questions
                    delay_s=stagger_s * i / streams,
                    max_tokens=max_tokens,
                    records=records,
                )
            )
            for i in range(streams)
        ]
        await asyncio.sleep(seconds)
        ended = time.perf_counter()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return summarize(records, streams=streams, started=started, ended=ended), records


def settle(url: str, timeout_s: float = 300) -> None:
    """Return once the server answers a one-token request: what the last cell left
    behind (requests its clients abandoned) has been dropped or finished."""
    body = {**payload(QUESTIONS[0], 1), "stream": False}
    del body["stream_options"]
    request = urllib.request.Request(
        f"{url}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        response.read()


def batch_stats(url: str) -> dict[str, int] | None:
    """A baseline's /stats (batches and requests so far); None for a server without."""
    try:
        with urllib.request.urlopen(f"{url}/stats", timeout=5) as response:
            stats: dict[str, int] = json.loads(response.read())
            return stats
    except OSError:
        return None


def measure(
    url: str,
    prompts: Sequence[str],
    *,
    streams: Sequence[int],
    seconds: float,
    max_tokens: int,
    warmup_s: float,
    stagger_s: float,
) -> dict[int, CellStats]:
    settle(url)
    asyncio.run(
        run_cell(
            url,
            prompts,
            streams=min(4, max(streams)),
            seconds=warmup_s,
            max_tokens=max_tokens,
            stagger_s=0,
        )
    )
    cells = {}
    for count in streams:
        settle(url)
        before = batch_stats(url)
        cell, _ = asyncio.run(
            run_cell(
                url,
                prompts,
                streams=count,
                seconds=seconds,
                max_tokens=max_tokens,
                stagger_s=min(stagger_s, seconds / 4),
            )
        )
        after = batch_stats(url)
        if before is not None and after is not None and after["batches"] > before["batches"]:
            mean = (after["requests"] - before["requests"]) / (after["batches"] - before["batches"])
            cell = CellStats(**{**asdict(cell), "mean_batch": mean})
        cells[count] = cell
        print(f"  {count:>3} streams: {line(cell)}", flush=True)
    return cells


# --- the servers -------------------------------------------------------------------------


@dataclass
class Baseline:
    """bench/llm_servers.py `kind` (one, static) in its own process."""

    kind: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def spawn(
        cls,
        kind: str,
        model_dir: Path,
        *,
        workdir: Path,
        threads: int = 2,
        window_ms: float = 20.0,
        max_batch: int = 32,
    ) -> Baseline:
        """Start it; `wait_ready` says when it serves."""
        port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / f"{kind}.log"
        command = [
            sys.executable,
            str(HERE / "llm_servers.py"),
            kind,
            f"--model-dir={model_dir}",
            f"--port={port}",
            f"--threads={threads}",
            f"--window-ms={window_ms}",
            f"--max-batch={max_batch}",
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        return cls(kind, f"http://127.0.0.1:{port}", process, log)

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited ({self.process.returncode}) before serving:\n"
                    + self.log.read_text()[-3000:]
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.kind} not ready after {timeout_s:.0f} s; see {self.log}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def baseline(kind: str, model_dir: Path, **options: Any) -> Iterator[str]:
    """A Baseline (Baseline.spawn's options) while the block runs; yields its URL."""
    server = Baseline.spawn(kind, model_dir, **options)
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.stop()


def ours_config(model_dir: Path, port: int, *, threads: int = 2) -> dict[str, Any]:
    """The Serve config of the modelplane replica for `model_dir`: the operator's own
    rendering of a one-replica ModelDeployment generating up to 32 sequences at once."""
    from modelplane_operator.api.resources import ModelDeployment  # noqa: PLC0415
    from modelplane_operator.serve_config import ResolvedModel, render_serve_config  # noqa: PLC0415

    uri = f"file://{model_dir}"
    deployment = ModelDeployment.model_validate(
        {
            "apiVersion": "modelplane.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": MODEL_NAME},
            "spec": {
                "model": {"uri": uri},
                "generation": {"maxSequences": 32, "maxWaiting": 32},
                "replicas": {"min": 1, "max": 1},
            },
        }
    )
    return render_serve_config(
        deployment,
        ResolvedModel(uri=uri, digest="", metrics={}, task="text-generation"),
        replica_cpus=threads,
        threads=threads,
        http_host="127.0.0.1",
        http_port=port,
    )


def start_ours(model_dir: Path, port: int, *, workdir: Path, threads: int = 2) -> LocalServer:
    """The modelplane replica serving `model_dir` on `port`, started as `modelplane run`
    starts it (`python -m modelplane_runtime serve` on a Serve config) with `threads`
    CPUs; returns once it serves (`.endpoint`), LocalServeError when it cannot."""
    from modelplane.serving import start_server  # noqa: PLC0415

    config = ours_config(model_dir, port, threads=threads)
    return start_server(config, workdir=workdir, num_cpus=threads)


@contextlib.contextmanager
def ours(model_dir: Path, *, workdir: Path, threads: int = 2) -> Iterator[str]:
    """start_ours on a free port while the block runs; yields its URL."""
    server = start_ours(model_dir, free_port(), workdir=workdir, threads=threads)
    try:
        yield server.endpoint
    finally:
        server.stop()


# --- the model ---------------------------------------------------------------------------


def smollm2(uri: str) -> Path:
    """The model as a Hugging Face folder, through the runtime's own resolution (a
    builtin:// model is converted once into the storage cache)."""
    from modelplane_runtime.lm.models import resolve_model_uri  # noqa: PLC0415

    return resolve_model_uri(uri, field="--model")


def make_tiny_model(folder: Path) -> Path:
    """A tiny random llama (2 layers, hidden 32) with a byte-level BPE tokenizer and a
    chat template, saved as a Hugging Face folder: --quick mode and the tests."""
    import torch  # noqa: PLC0415
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    from modelplane_runtime.lm.tokenizer import train_bpe, wrap  # noqa: PLC0415

    tokenizer = wrap(train_bpe(QUESTIONS, vocab_size=300))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def chat_prompts(model_dir: Path) -> list[str]:
    """QUESTIONS as the model's chat template writes a user turn awaiting the answer."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [
        str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            )
        )
        for q in QUESTIONS
    ]


# --- the report --------------------------------------------------------------------------


def fmt(value: float, lower_bound: bool = False) -> str:
    if math.isnan(value):  # nothing measured
        return "-"
    return f"{'>=' if lower_bound else ''}{value:.0f}"


def line(cell: CellStats) -> str:
    batch = f", {cell.mean_batch:.1f} per batch" if cell.mean_batch is not None else ""
    per_chunk = cell.tokens / cell.text_chunks if cell.text_chunks else float("nan")
    return (
        f"{cell.tokens_per_s:.1f} tokens/s, TTFT p50/p99 {fmt(cell.ttft_p50_ms)}/"
        f"{fmt(cell.ttft_p99_ms)} ms, ITL p50/p99 {fmt(cell.itl_p50_ms)}/"
        f"{fmt(cell.itl_p99_ms)} ms, {cell.completed} done + {cell.cut} cut, "
        f"{cell.failures} failed, {per_chunk:.2f} tokens per text chunk{batch}"
    )


def ratios(results: dict[str, dict[int, CellStats]]) -> list[tuple[str, float, str]]:
    """(what, value, goal): the figures the issue's goals are about."""
    found: list[tuple[str, float, str]] = []
    a, b, c = (results.get(name) for name in ("one", "static", "ours"))
    if not any(results.values()):
        return found
    most = max(n for cells in results.values() for n in cells)
    least = min(n for cells in results.values() for n in cells)

    def rate(cells: dict[int, CellStats] | None) -> float:
        return cells[most].tokens_per_s if cells and most in cells else float("nan")

    def ttft99(cells: dict[int, CellStats] | None) -> float:
        return cells[least].ttft_p99_ms if cells and least in cells else float("nan")

    if c and a:
        found.append((f"ours / (a) tokens/s at {most} streams", rate(c) / rate(a), ">= 5"))
    if c and b:
        found.append((f"ours / (b) tokens/s at {most} streams", rate(c) / rate(b), "-"))
    if c and a:
        found.append((f"ours / (a) TTFT p99 at {least} stream(s)", ttft99(c) / ttft99(a), "< 2"))
    if b and a:
        found.append((f"(b) / (a) tokens/s at {most} streams", rate(b) / rate(a), "-"))
    return found


def markdown(results: dict[str, dict[int, CellStats]]) -> str:
    rows = [
        "| server | streams | output tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms "
        "| ITL p99 ms | requests (done + cut) | failures |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cells in results.items():
        for count, cell in cells.items():
            p50_bound = cell.longest_wait_ms > cell.ttft_p50_ms
            p99_bound = cell.longest_wait_ms > cell.ttft_p99_ms
            rows.append(
                f"| {SERVERS[name]} | {count} | {cell.tokens_per_s:.1f} "
                f"| {fmt(cell.ttft_p50_ms, p50_bound)} | {fmt(cell.ttft_p99_ms, p99_bound)} "
                f"| {fmt(cell.itl_p50_ms)} | {fmt(cell.itl_p99_ms)} "
                f"| {cell.completed} + {cell.cut} | {cell.failures} |"
            )
    found = ratios(results)
    if found:
        rows += ["", "| ratio | measured | goal |", "|---|---|---|"]
        rows += [f"| {what} | **{value:.2f}** | {goal} |" for what, value, goal in found]
    return "\n".join(rows)


# --- the run -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, dict[int, CellStats]]:
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in SERVERS]
    if unknown:
        raise SystemExit(f"--only: unknown {', '.join(unknown)}; known: {', '.join(SERVERS)}")
    root = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    model_dir = make_tiny_model(root / "tiny-llama") if args.quick else smollm2(args.model)
    prompts = chat_prompts(model_dir)
    streams = [int(n) for n in args.streams.split(",")]
    print(
        f"{os.cpu_count()} CPUs; model {'tiny llama' if args.quick else args.model} "
        f"({model_dir}), fp32, {args.threads} torch threads; {args.max_tokens} tokens per "
        f"request; {args.seconds:.0f} s per cell at {streams} streams",
        flush=True,
    )
    results: dict[str, dict[int, CellStats]] = {}
    for name in only:
        print(f"{SERVERS[name]}:", flush=True)
        if name == "ours" and args.ours_url:
            server: contextlib.AbstractContextManager[str] = contextlib.nullcontext(
                args.ours_url.rstrip("/")
            )
        elif name == "ours":
            server = ours(model_dir, workdir=root / "ours", threads=args.threads)
        else:
            server = baseline(
                name,
                model_dir,
                workdir=root / name,
                threads=args.threads,
                window_ms=args.window_ms,
            )
        with server as url:
            results[name] = measure(
                url,
                prompts,
                streams=streams,
                seconds=args.seconds,
                max_tokens=args.max_tokens,
                warmup_s=args.warmup,
                stagger_s=args.stagger,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="one,static,ours", help="servers, in this order")
    parser.add_argument("--streams", help="concurrent streams per cell (1,8,32)")
    parser.add_argument("--seconds", type=float, help="length of one cell (20)")
    parser.add_argument("--max-tokens", type=int, help="tokens per request (64)")
    parser.add_argument("--warmup", type=float, help="seconds of load before the cells (3)")
    parser.add_argument("--stagger", type=float, default=1.0, help="seconds the starts spread")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per server")
    parser.add_argument("--window-ms", type=float, default=20.0, help="(b)'s batch window")
    parser.add_argument("--model", default=MODEL_URI, help="builtin://, file:// or pvc:// model")
    parser.add_argument("--ours-url", default=None, help="measure this running server as ours")
    parser.add_argument(
        "--quick", action="store_true", help="a tiny random llama, 8 tokens, 3 s cells at 1,4"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    for option, value in (QUICK if args.quick else FULL).items():
        if getattr(args, option) is None:
            setattr(args, option, value)
    results = run(args)
    print()
    print(markdown(results))
    if args.json:
        document = {
            "model": "tiny-llama" if args.quick else args.model,
            "max_tokens": args.max_tokens,
            "seconds": args.seconds,
            "threads": args.threads,
            "results": {
                name: {
                    str(n): {**asdict(c), "tokens_per_s": c.tokens_per_s} for n, c in cells.items()
                }
                for name, cells in results.items()
            },
            "ratios": [
                {"what": what, "value": value, "goal": goal}
                for what, value, goal in ratios(results)
            ],
        }
        args.json.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
