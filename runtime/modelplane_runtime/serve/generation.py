"""Text generation for one replica: transformers' continuous batching behind an async API.

`Engine` drives one model with a `ContinuousBatchingManager` (a paged KV cache bounded by
`GenerationArgs.kv_cache_tokens`, forward passes of at most `max_batch_tokens` mixing
prompt chunks and decode steps of every sequence in flight) in transformers' own
background thread; results come back to the event loop through the manager's result
handlers (`call_soon_threadsafe`). `Generator` is what the routes use: the base model's
engine, LoRA adapters by name, admission (at most `max_sequences` sequences in the
batch, `max_waiting` more waiting, beyond that `OverloadedError` -> 429 with Retry-After),
and the running/waiting counts the metrics and the autoscaler read.

Sampling: greedy sequences (temperature 0) run on a manager without logits processors,
so they are the arg-max `generate` takes (tests/serving/test_lm_serving.py compares the
text); sampled ones on a second manager, started on first use, with per-request
temperature and top-p. That manager draws from one generator for its whole batch, so a
sampled sequence depends on its neighbours; `seed` is accepted as OpenAI's API does
("best effort").

Adapters: PEFT computes one adapter for a whole forward pass, and the manager batches
every sequence into one pass, so sequences of different adapters cannot share a batch.
Each adapter in use gets its own engine on its own copy of the base with the adapter
merged (`merge_and_unload`: plain linear layers, no LoRA cost per token), built on first
use and kept in an LRU of `max_loaded_adapters`; an idle one is dropped to make room, and
when every loaded adapter is busy a request for another gets `OverloadedError`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from modelplane_runtime import storage
from modelplane_runtime.artifacts import CARD, verify_artifact
from modelplane_runtime.contract import AdapterRef, GenerationArgs, ServeArgs
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.lm.artifact import base_digest, load_lm_artifact
from modelplane_runtime.lm.models import check_model_folder, convert_builtin
from modelplane_runtime.serve.model_cache import model_dir

log = logging.getLogger("modelplane.serve")

# The manager creates a temperature and a top-p processor only when its configuration's
# values differ from "off" (1.0); per-request values then override these defaults.
_DEFAULT_TEMPERATURE = 0.7
_DEFAULT_TOP_P = 0.95
PAGE_TOKENS = 64
"""Tokens per KV-cache page: a sequence holds whole pages, so short chat turns waste
little of the bounded cache."""


class OverloadedError(Exception):
    """No room for another sequence now; the caller should retry after `retry_after_s`."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnknownModelError(Exception):
    """A request named a model (or adapter) this replica does not serve."""


@dataclass(frozen=True)
class Step:
    """What one delivery of a sequence added: new token ids, and how it ended if it did."""

    tokens: tuple[int, ...]
    finish_reason: str | None = None
    """"stop" (an end-of-sequence token), "length" (max_tokens reached) or None."""


@dataclass(frozen=True)
class LoadedLanguageModel:
    model: Any
    tokenizer: Any
    digest: str
    base_dir: Path
    """The folder of the base weights: adapters are merged into copies of it."""


def load_language_model(args: ServeArgs, *, device: torch.device) -> LoadedLanguageModel:
    """The model at `args.model_uri`: builtin://smollm2-135m-instruct (converted once into
    the storage cache), a modelplane text-generation artifact (an unmerged adapter is
    merged into its base), or a plain Hugging Face folder with a causal LM."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    scheme, rest = storage.split_uri(args.model_uri)
    if scheme == "builtin":
        folder = convert_builtin(rest, field="model.uri")
        return _plain_folder(folder, dtype=dtype, device=device)
    folder = model_dir(args.model_uri, expected_digest=args.expected_digest)
    if not (folder / CARD).is_file():
        check_model_folder(folder, source=args.model_uri, field="model.uri")
        return _plain_folder(folder, dtype=dtype, device=device)
    card = verify_artifact(folder, expected_digest=args.expected_digest)
    if card["task"] != "text-generation":
        raise ConfigError(
            f"model.uri: {args.model_uri} is a {card['task']} model, not text-generation"
        )
    loaded = load_lm_artifact(folder, card=card, device="cpu")
    model = loaded.model
    base_dir = folder
    if card.get("base") is not None:
        model = model.merge_and_unload()
        base_dir = convert_or_find(card["base"]["uri"])
    model = model.to(device=device, dtype=dtype).eval()
    return LoadedLanguageModel(
        model=model, tokenizer=loaded.tokenizer, digest=card["digest"], base_dir=base_dir
    )


def convert_or_find(uri: str) -> Path:
    scheme, rest = storage.split_uri(uri)
    if scheme == "builtin":
        return convert_builtin(rest, field="model.uri (the adapter's base)")
    return storage.materialize(uri, field="model.uri (the adapter's base)", folder=True)


def _plain_folder(folder: Path, *, dtype: torch.dtype, device: torch.device) -> LoadedLanguageModel:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model = model.to(device).eval()
    return LoadedLanguageModel(
        model=model, tokenizer=tokenizer, digest=base_digest(folder), base_dir=folder
    )


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in ids if i is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


class Engine:
    """One model and its continuous-batching managers: one for greedy sequences (no
    logits processors: the arg-max of the logits) and, from the first sampled request,
    one for sampled sequences (per-request temperature and top-p processors). The
    processors cost about a third of the throughput on 2 cores (top-p sorts the whole
    vocabulary for every row of every step: 125 against 82 tokens/s at 32 streams of
    SmolLM2), so greedy traffic does not pay for them. Each manager has its own KV cache
    of `kv_cache_tokens`."""

    def __init__(self, model: Any, tokenizer: Any, args: GenerationArgs) -> None:
        self.model = model
        self.args = args
        self.eos = _eos_ids(model, tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos[0]
        self.managers: dict[bool, Any] = {}
        self._starting = threading.Lock()
        self.manager(sampled=False)
        self.active = 0
        self._ids = 0
        self._lock = threading.Lock()

    def manager(self, *, sampled: bool) -> Any:
        """The manager for greedy or sampled sequences, started on first use."""
        found = self.managers.get(sampled)
        if found is not None:
            return found
        with self._starting:
            if sampled in self.managers:
                return self.managers[sampled]
            sampling: dict[str, Any] = (
                {"do_sample": True, "temperature": _DEFAULT_TEMPERATURE, "top_p": _DEFAULT_TOP_P}
                if sampled
                else {"do_sample": False}
            )
            config = GenerationConfig(  # type: ignore[no-untyped-call]
                max_new_tokens=self.args.max_tokens,
                eos_token_id=self.eos,
                pad_token_id=self.pad,
                **sampling,
            )
            batching = ContinuousBatchingConfig(
                page_size=PAGE_TOKENS,
                num_blocks=math.ceil(self.args.kv_cache_tokens / PAGE_TOKENS),
                max_batch_tokens=self.args.max_batch_tokens,
                max_requests_per_batch=self.args.max_sequences,
                per_request_processors=sampled,
            )
            manager = self.model.init_continuous_batching(
                generation_config=config, continuous_batching_config=batching
            )
            manager.start()
            self.managers[sampled] = manager
            return manager

    def _new_id(self) -> str:
        with self._lock:
            self._ids += 1
            return f"seq-{self._ids}"

    def alive(self) -> bool:
        return all(
            bool(m.is_running()) and m.background_thread_status.fatal_error is None
            for m in self.managers.values()
        )

    async def generate(
        self, prompt: list[int], *, max_tokens: int, temperature: float, top_p: float
    ) -> AsyncGenerator[Step]:
        """The sequence's tokens as they come. Leaving the iteration early (a stop
        string, a client that went away) cancels the sequence and frees its cache."""
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[Any] = asyncio.Queue()
        request_id = self._new_id()
        sampled = temperature > 0
        manager = self.manager(sampled=sampled)
        manager.register_result_handler(request_id, outputs.put_nowait)
        finished = False
        self.active += 1
        try:
            processors = {"temperature": float(temperature), "top_p": float(top_p)}
            manager.add_request(
                prompt,
                request_id=request_id,
                max_new_tokens=max_tokens,
                streaming=True,
                **(processors if sampled else {}),
            )
            seen = 0
            while True:
                output = await outputs.get()
                if output.error is not None:
                    finished = True
                    raise RuntimeError(f"generation failed: {output.error}")
                tokens = tuple(output.generated_tokens[seen:])
                seen = len(output.generated_tokens)
                if not output.is_finished():
                    if tokens:
                        yield Step(tokens)
                    continue
                finished = True
                last = output.generated_tokens[-1] if output.generated_tokens else None
                reason = "stop" if last in self.eos else "length"
                yield Step(tokens, finish_reason=reason)
                return
        finally:
            self.active -= 1
            if not finished:
                manager.cancel_request(request_id)
                loop.call_soon(self._forget, manager, request_id)

    @staticmethod
    def _forget(manager: Any, request_id: str) -> None:
        """Drop the result handler of a cancelled sequence (the manager removes a handler
        only when its sequence finishes, and a cancelled one never does)."""
        router = manager.output_router
        with router._lock:  # the manager's own lock around its handlers
            router.result_handlers.pop(request_id, None)

    def stop(self) -> None:
        for manager in self.managers.values():
            manager.stop(block=True, timeout=10)


@dataclass
class _Admission:
    """Sequences in the batch (`running`) and waiting for a place (`waiting`)."""

    limit: int
    waiting_limit: int
    running: int = 0
    waiting: int = 0
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class Generator:
    """The replica's generation: the base engine, adapters by name, admission."""

    def __init__(self, args: ServeArgs, *, device: torch.device) -> None:
        self.args = args
        self.settings = args.generation or GenerationArgs()
        self.device = device
        started = time.perf_counter()
        self.loaded = load_language_model(args, device=device)
        self.tokenizer = self.loaded.tokenizer
        self.digest = self.loaded.digest
        self.name = args.model_name
        self.context = int(getattr(self.loaded.model.config, "max_position_embeddings", 0) or 2048)
        self.base = Engine(self.loaded.model, self.tokenizer, self.settings)
        self.adapters: dict[str, AdapterRef] = {a.name: a for a in self.settings.adapters}
        self.loaded_adapters: OrderedDict[str, Engine] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Engine]] = {}
        self.admission = _Admission(self.settings.max_sequences, self.settings.max_waiting)
        self.created = int(time.time())
        log.info(
            "generating with %s (digest %s) on %s; ready in %.1fs",
            args.model_uri,
            self.digest,
            device,
            time.perf_counter() - started,
        )

    # -- names -------------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        return [self.name] + [f"{self.name}:{name}" for name in self.adapters]

    def adapter_for(self, model: str) -> str | None:
        """The adapter a request's `model` names (None: the base model)."""
        if model == self.name:
            return None
        name = model.removeprefix(f"{self.name}:")
        if name in self.adapters:
            return name
        raise UnknownModelError(
            f"the model {model!r} does not exist here; this deployment serves "
            + ", ".join(repr(m) for m in self.model_ids())
        )

    async def engine(self, adapter: str | None) -> Engine:
        if adapter is None:
            return self.base
        if adapter in self.loaded_adapters:
            self.loaded_adapters.move_to_end(adapter)
            return self.loaded_adapters[adapter]
        pending = self._loading.get(adapter)
        if pending is not None:
            return await asyncio.shield(pending)
        self._make_room()
        future: asyncio.Future[Engine] = asyncio.get_running_loop().create_future()
        self._loading[adapter] = future
        try:
            engine = await asyncio.to_thread(self._load_adapter, self.adapters[adapter])
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: waiters get it through their await
            raise
        finally:
            self._loading.pop(adapter, None)
        self.loaded_adapters[adapter] = engine
        future.set_result(engine)
        return engine

    def _make_room(self) -> None:
        while len(self.loaded_adapters) + len(self._loading) >= self.settings.max_loaded_adapters:
            idle = next((n for n, e in self.loaded_adapters.items() if e.active == 0), None)
            if idle is None:
                raise OverloadedError(
                    f"every one of the {self.settings.max_loaded_adapters} adapters this "
                    "replica keeps loaded is generating; retry shortly",
                    retry_after_s=2.0,
                )
            log.info("dropping the idle adapter %s to load another", idle)
            self.loaded_adapters.pop(idle).stop()

    def _load_adapter(self, ref: AdapterRef) -> Engine:
        """The base with `ref` merged in, and its engine; the adapter must have been
        trained on the weights this replica serves."""
        from peft import PeftModel  # noqa: PLC0415

        field_name = f"generation.adapters[{ref.name}].uri"
        folder = model_dir(ref.uri, expected_digest=None)
        card = verify_artifact(folder, source=ref.uri, field=field_name)
        base = card.get("base")
        if base is None or card.get("task") != "text-generation":
            raise ConfigError(f"{field_name}: {ref.uri} is not a LoRA adapter of a language model")
        if base["digest"] != base_digest(self.loaded.base_dir):
            raise ConfigError(
                f"{field_name}: {ref.uri} was trained on {base['uri']} "
                f"(weights {base['digest']}), not on the model this deployment serves "
                f"({self.args.model_uri})"
            )
        started = time.perf_counter()
        dtype = next(self.loaded.model.parameters()).dtype
        model = AutoModelForCausalLM.from_pretrained(self.loaded.base_dir, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
        model = model.to(device=self.device, dtype=dtype).eval()
        engine = Engine(model, self.tokenizer, self.settings)
        log.info("loaded the adapter %s in %.1fs", ref.name, time.perf_counter() - started)
        return engine

    # -- admission ---------------------------------------------------------------------

    async def admit(self) -> None:
        """Wait for a place in the batch, or raise Overloaded when too many wait."""
        a = self.admission
        if a.running < a.limit and not a.waiters:
            a.running += 1
            return
        if a.waiting >= a.waiting_limit:
            raise OverloadedError(
                f"this replica is generating {a.running} sequences with {a.waiting} waiting, "
                "its limit (generation.maxSequences + maxWaiting); retry shortly"
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        a.waiters.append(future)
        a.waiting += 1
        try:
            await future  # the place is handed over with `running` already counted
        except BaseException:
            if future in a.waiters:
                a.waiters.remove(future)
            elif future.done() and not future.cancelled():
                self.release()  # the place came as we left: pass it on
            raise
        finally:
            a.waiting -= 1

    def release(self) -> None:
        a = self.admission
        while a.waiters:
            future = a.waiters.pop(0)
            if not future.done():
                future.set_result(None)  # `running` stays: the place moves to it
                return
        a.running -= 1

    def healthy(self) -> None:
        if not self.base.alive():
            raise RuntimeError("the generation thread stopped")

    def stop(self) -> None:
        for engine in [self.base, *self.loaded_adapters.values()]:
            engine.stop()
