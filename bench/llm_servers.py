"""The two baselines bench/llm_serving.py measures the modelplane replica against: the
same Hugging Face model, generated with plain `transformers` `generate`, behind FastAPI.

    python bench/llm_servers.py one    --model-dir DIR --port 8001
    python bench/llm_servers.py static --model-dir DIR --port 8002 --window-ms 20 --max-batch 32

- one: one request at a time (what a first hand-written server does): requests wait in
  arrival order, and each runs `model.generate` alone.
- static: plain static batching: the requests that arrive within `--window-ms` of the
  first (at most `--max-batch`) are left-padded into one batch and generated together;
  a request that arrives while a batch runs waits for the next batch.

Both speak the subset of OpenAI's `POST /v1/completions` the bench sends (greedy only),
streaming one server-sent event per generated token as `generate` produces it (a
`BaseStreamer` receives each step's tokens), so one client measures time to first token
and inter-token latency alike for every server. With `stream_options.include_usage` the
last event before `[DONE]` carries `usage`. A client that disconnects frees its row: the
stopping criteria end it at the next step, and a waiting request is dropped.
`GET /stats` says how many batches ran and how large they were.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

MODEL_NAME = "bench"
"""What clients put in `model` (the bench serves every variant under this name)."""
REPLACEMENT = "\ufffd"
"""What a partial UTF-8 sequence decodes to: its text waits for the next token."""


@dataclass
class Job:
    """One request, from the HTTP handler (event loop) to the generation thread and back."""

    prompt_ids: list[int]
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, str | None]] = field(default_factory=asyncio.Queue)
    """(text of one token, finish reason or None); ("", "error: ...") when generate fails."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    ids: list[int] = field(default_factory=list)
    emitted: int = 0
    """Characters of the decoded text already sent."""
    done: bool = False

    def send(self, text: str, finish: str | None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (text, finish))


@dataclass
class Stats:
    batches: int = 0
    requests: int = 0
    largest_batch: int = 0
    dropped: int = 0
    """Requests whose client left before they ended (while waiting or generating)."""


class RowLimits(StoppingCriteria):
    """Ends each row of a batch at its own max_tokens, or at once when its client left."""

    def __init__(self, jobs: list[Job], prompt_length: int) -> None:
        self.jobs = jobs
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_length
        stop = [generated >= job.max_tokens or job.cancelled.is_set() for job in self.jobs]
        return torch.tensor(stop, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class RowStreamer(BaseStreamer):
    """Hands each row's new token to its request as `generate` produces it.

    `put` is called once with the prompts (batch, length), then once per step with the
    step's tokens (batch,); a finished row keeps receiving the pad token, ignored here."""

    def __init__(
        self, jobs: list[Job], tokenizer: PreTrainedTokenizerBase, eos: set[int], stats: Stats
    ) -> None:
        self.jobs = jobs
        self.stats = stats
        self.tokenizer = tokenizer
        self.eos = eos
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for job, token in zip(self.jobs, value.view(-1).tolist(), strict=True):
            if job.done:
                continue
            if job.cancelled.is_set():
                job.done = True
                self.stats.dropped += 1
                continue
            job.ids.append(int(token))
            if int(token) in self.eos:
                job.done = True
                job.send("", "stop")
                continue
            text = str(self.tokenizer.decode(job.ids, skip_special_tokens=True))
            delta = "" if text.endswith(REPLACEMENT) else text[job.emitted :]
            job.emitted += len(delta)
            job.done = len(job.ids) >= job.max_tokens
            job.send(delta, "length" if job.done else None)

    def end(self) -> None:
        for job in self.jobs:
            if not job.done:  # the model's length limit ended it first
                job.done = True
                job.send("", "length")


class Engine:
    """The generation thread: takes a batch of waiting requests, generates it to the end,
    takes the next. `max_batch` 1 and no window is one request at a time."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch: int,
        window_s: float,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        """Decodes in the generation thread only: a fast tokenizer used from two threads
        at once can fail ("Already borrowed"), so the handlers encode with their own."""
        self.max_batch = max_batch
        self.window_s = window_s
        self.waiting: queue.Queue[Job] = queue.Queue()
        self.stats = Stats()
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos = set(eos) if isinstance(eos, list) else {int(eos)}
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos)
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 2048))

    def start(self) -> None:
        threading.Thread(target=self._run, name="generate", daemon=True).start()

    def _next_batch(self) -> list[Job]:
        batch = [self.waiting.get()]
        closes = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self.waiting.get(timeout=max(0.0, closes - time.monotonic())))
            except queue.Empty:
                break
        live = [job for job in batch if not job.cancelled.is_set()]
        self.stats.dropped += len(batch) - len(live)
        return live

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                continue
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            try:
                self._generate(batch)
            except Exception as exc:  # the requests learn of it; the server keeps serving
                for job in batch:
                    if not job.done:
                        job.done = True
                        job.send("", f"error: {type(exc).__name__}: {exc}")

    def _generate(self, batch: list[Job]) -> None:
        length = max(len(job.prompt_ids) for job in batch)
        # Left padding: every row's next token is at the same (last) position.
        ids = torch.full((len(batch), length), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, job in enumerate(batch):
            ids[row, length - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            mask[row, length - len(job.prompt_ids) :] = 1
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=max(job.max_tokens for job in batch),
            do_sample=False,
            eos_token_id=sorted(self.eos),
            pad_token_id=self.pad,
        )
        with torch.inference_mode():
            self.model.generate(  # type: ignore[operator]
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([RowLimits(batch, length)]),
                streamer=RowStreamer(batch, self.tokenizer, self.eos, self.stats),
            )


def error(status: int, message: str, *, param: str | None = None) -> JSONResponse:
    """OpenAI's error shape."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": None}},
        status_code=status,
    )


@dataclass(frozen=True)
class Completion:
    prompt: str
    max_tokens: int
    stream: bool
    include_usage: bool


class BadRequestError(Exception):
    def __init__(self, message: str, *, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


def parse(body: Any) -> Completion:
    """The request; BadRequestError naming the field at fault."""
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    if body.get("model") != MODEL_NAME:
        raise BadRequestError(
            f"model: {body.get('model')!r} is not served here; use {MODEL_NAME!r}",
            param="model",
            status=404,
        )
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadRequestError("prompt: a non-empty string is required", param="prompt")
    max_tokens = body.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequestError("max_tokens: a positive integer is required", param="max_tokens")
    if body.get("temperature", 0) not in (0, 0.0):
        raise BadRequestError(
            "temperature: this baseline decodes greedily; send 0", param="temperature"
        )
    stream = body.get("stream", False)
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise BadRequestError("stream must be a boolean and stream_options an object")
    return Completion(prompt, max_tokens, stream, bool(options.get("include_usage")))


def chunk(ident: str, created: int, text: str, finish: str | None) -> dict[str, Any]:
    choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
    return {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": MODEL_NAME,
        "choices": [choice],
    }


def build_app(engine: Engine, encoder: PreTrainedTokenizerBase) -> FastAPI:
    app = FastAPI()
    numbers = itertools.count()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return vars(engine.stats)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        model = {"id": MODEL_NAME, "object": "model", "owned_by": "bench"}
        return {"object": "list", "data": [model]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the body is not JSON")
        try:
            parsed = parse(body)
        except BadRequestError as bad:
            return error(bad.status, str(bad), param=bad.param)
        prompt_ids = list(encoder(parsed.prompt)["input_ids"])
        room = engine.max_positions - len(prompt_ids)
        if parsed.max_tokens > room:
            return error(
                400,
                f"max_tokens: the prompt has {len(prompt_ids)} tokens, so at most {room} "
                f"more fit the model's {engine.max_positions}",
                param="max_tokens",
            )
        job = Job(prompt_ids, parsed.max_tokens, asyncio.get_running_loop())
        engine.waiting.put(job)
        ident, created = f"cmpl-{next(numbers)}", int(time.time())
        usage = {"prompt_tokens": len(prompt_ids)}
        if not parsed.stream:
            texts, finish = await collect(job)
            if finish.startswith("error"):
                return error(500, finish)
            answer = chunk(ident, created, "".join(texts), finish)
            answer["usage"] = {**usage, "completion_tokens": len(job.ids)}
            return JSONResponse(answer)

        async def events() -> AsyncIterator[str]:
            try:
                while True:
                    text, finish = await job.events.get()
                    if finish is not None and finish.startswith("error"):
                        yield f"data: {json.dumps({'error': {'message': finish}})}\n\n"
                        return
                    yield f"data: {json.dumps(chunk(ident, created, text, finish))}\n\n"
                    if finish is not None:
                        break
                if parsed.include_usage:
                    last = {**chunk(ident, created, "", None), "choices": []}
                    last["usage"] = {**usage, "completion_tokens": len(job.ids)}
                    yield f"data: {json.dumps(last)}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # also when the client left: its row ends at the next step
                job.cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


async def collect(job: Job) -> tuple[list[str], str]:
    texts = []
    while True:
        text, finish = await job.events.get()
        texts.append(text)
        if finish is not None:
            return texts, finish


def load(model_dir: Path, threads: int) -> PreTrainedModel:
    """The model in fp32 with `threads` torch threads, as the bench's other servers run."""
    torch.set_num_threads(threads)
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()  # type: ignore[no-untyped-call]
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["one", "static"])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--window-ms", type=float, default=20.0, help="static: batch window")
    parser.add_argument("--max-batch", type=int, default=32, help="static: largest batch")
    args = parser.parse_args()
    import uvicorn  # noqa: PLC0415

    static = args.kind == "static"
    engine = Engine(
        load(args.model_dir, args.threads),
        AutoTokenizer.from_pretrained(args.model_dir),
        max_batch=args.max_batch if static else 1,
        window_s=args.window_ms / 1000 if static else 0.0,
    )
    engine.start()
    app = build_app(engine, AutoTokenizer.from_pretrained(args.model_dir))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
