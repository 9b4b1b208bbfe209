"""A language model's records to padded token tensors, with the loss where it belongs.

A record (one JSONL line) is one of:
- `{"text": ...}` (the field `data.textColumn` names): pre-training. Every text is
  followed by EOS, the texts are concatenated and cut into `max_length` chunks, and
  every token is learnt.
- `{"prompt": ..., "response": ...}`: completion. The two are tokenized back to back
  (no template), the response followed by EOS; only the response is learnt.
- `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`: chat,
  rendered by the tokenizer's chat template; only the assistant turns are learnt.

Labels are -100 wherever nothing is learnt (prompt, system and user turns, template
markup around them, padding); the next-token shift happens in `lm.loss`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from modelplane_runtime.contract import RunConfig
from modelplane_runtime.data.builtin import BUILTIN, chat_records
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.lm.tokenizer import run_tokenizer
from modelplane_runtime.storage import materialize, split_uri

DEFAULT_VALIDATION_SPLIT = 0.1
DEFAULT_MAX_LENGTH = 256
"""A `llama`'s context unless params.max_length says otherwise."""
HUGGINGFACE_MAX_LENGTH = 512
"""A `huggingface` model's context is its own, at most this unless params.max_length."""
DEFAULT_VOCAB_SIZE = 2000
IGNORE = -100
ROLES = ("system", "user", "assistant")
FIELDS_HELP = (
    "a text-generation task reads {text!r} (pre-training), 'prompt' and 'response' "
    "(completion) or 'messages' (chat: a list of {{role, content}} with an assistant turn)"
)


@dataclass
class LmData:
    train: TensorDataset
    """(input_ids [N, L] long, labels [N, L] long with -100 = no loss, attention_mask [N, L])."""
    validation: TensorDataset
    tokenizer: PreTrainedTokenizerBase


@dataclass(frozen=True)
class Record:
    """One example as read, with where it came from (for errors)."""

    where: str
    """e.g. "data.train: train.jsonl line 12"."""
    text: str | None = None
    prompt: str | None = None
    response: str | None = None
    messages: tuple[dict[str, str], ...] = ()

    def strings(self) -> Iterator[str]:
        """Every piece of text in the record (what a tokenizer is trained on)."""
        for value in (self.text, self.prompt, self.response):
            if value is not None:
                yield value
        for message in self.messages:
            yield message["role"]
            yield message["content"]


def _from_here(make: Callable[[], str]) -> str:
    return make()


def prepare_lm(
    config: RunConfig,
    *,
    base_dir: Path | None,
    tokenizer_store: Path,
    from_main: Callable[[Callable[[], str]], str] = _from_here,
) -> LmData:
    """Read, split, tokenize and pad both parts of the data.

    With `base_dir` (the init model's folder) the model's own tokenizer is used;
    otherwise a byte-level BPE is trained on the training records once per run (see
    `lm.tokenizer.run_tokenizer`)."""
    data = config.data
    train = read_records(data.train_uri, field="data.train", text_column=data.text_column)
    if data.validation_uri:
        validation = read_records(
            data.validation_uri, field="data.validation", text_column=data.text_column
        )
    else:
        train, validation = split_records(
            train, data.validation_split or DEFAULT_VALIDATION_SPLIT, config.optim.seed
        )
    if base_dir is not None:
        tokenizer = load_base_tokenizer(base_dir, source=config.init_uri)
    else:
        tokenizer = run_tokenizer(
            lambda: (s for r in train for s in r.strings()),
            vocab_size=int(config.params.get("vocab_size", DEFAULT_VOCAB_SIZE)),
            store=tokenizer_store,
            from_main=from_main,
        )
    max_length = max_length_for(config, base_dir)
    return LmData(
        train=encode(train, tokenizer, max_length=max_length, field="data.train"),
        validation=encode(validation, tokenizer, max_length=max_length, field="data.validation"),
        tokenizer=tokenizer,
    )


def max_length_for(config: RunConfig, base_dir: Path | None) -> int:
    """params.max_length; else a `huggingface` model's own context (at most 512), else 256."""
    if "max_length" in config.params:
        return int(config.params["max_length"])
    if config.architecture == "huggingface" and base_dir is not None:
        model_config = AutoConfig.from_pretrained(base_dir)
        own = getattr(model_config, "max_position_embeddings", None) or getattr(
            model_config, "n_positions", None
        )
        return min(int(own or HUGGINGFACE_MAX_LENGTH), HUGGINGFACE_MAX_LENGTH)
    return DEFAULT_MAX_LENGTH


def load_base_tokenizer(base_dir: Path, *, source: str | None) -> PreTrainedTokenizerBase:
    """The init model's tokenizer; a model without one cannot read text."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model.init.uri: {source or base_dir} has no tokenizer a language model can "
            f"use (tokenizer.json and tokenizer_config.json): {exc}"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# -- reading ---------------------------------------------------------------------------


def read_records(uri: str, *, field: str, text_column: str = "text") -> list[Record]:
    """The records at `uri` (JSONL, or builtin://chat), each checked. `field` names the
    spec field in errors (data.train, data.validation)."""
    scheme, rest = split_uri(uri)
    if scheme == "builtin":
        if rest != "chat":
            fitting = [f"builtin://{n}" for n, (kind, _) in BUILTIN.items() if kind == "chat"]
            raise ConfigError(
                f"{field}.uri: builtin://{rest} is not a data set a text-generation task "
                f"reads; use {', '.join(fitting)} or a JSONL file"
            )
        rows: list[tuple[str, object]] = [
            (f"{field}: builtin://chat record {n}", r)
            for n, r in enumerate(chat_records(), start=1)
        ]
    else:
        path = materialize(uri, field=f"{field}.uri", folder=False)
        if not path.is_file():
            raise ConfigError(f"{field}.uri: {uri} not found (looked at {path})")
        if path.suffix.lower() not in (".jsonl", ".json"):
            raise ConfigError(
                f"{field}.uri: cannot read {path.name}: a text-generation task reads JSONL "
                "(one record per line)"
            )
        rows = list(_jsonl_lines(path, field))
    if not rows:
        raise ConfigError(f"{field}: {uri} holds no records")
    return [parse_record(row, where=where, text_column=text_column) for where, row in rows]


def _jsonl_lines(path: Path, field: str) -> Iterator[tuple[str, object]]:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{field}: {path.name} line {number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where} is not JSON: {exc}") from exc


def parse_record(row: object, *, where: str, text_column: str) -> Record:
    """A checked record; anything else is a ConfigError saying where and what is wrong."""
    if not isinstance(row, dict):
        raise ConfigError(f"{where} is not a JSON object; {_help(text_column)}")
    if "messages" in row:
        return Record(where=where, messages=_messages(row["messages"], where))
    if "prompt" in row or "response" in row:
        prompt, response = row.get("prompt"), row.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise ConfigError(
                f"{where}: 'prompt' and 'response' must both be strings "
                f"(got {type(prompt).__name__} and {type(response).__name__})"
            )
        return Record(where=where, prompt=prompt, response=response)
    if text_column in row:
        text = row[text_column]
        if not isinstance(text, str):
            raise ConfigError(f"{where}: {text_column!r} must be a string")
        return Record(where=where, text=text)
    present = ", ".join(map(str, row)) or "none"
    raise ConfigError(
        f"{where} has none of the fields needed (it has: {present}); "
        f"{_help(text_column)}; set spec.data.textColumn to rename 'text'"
    )


def _help(text_column: str) -> str:
    return FIELDS_HELP.format(text=text_column)


def _messages(value: Any, where: str) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    messages = []
    for index, message in enumerate(value):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise ConfigError(
                f'{where}: messages[{index}] must be {{"role": one of {", ".join(ROLES)}, '
                f'"content": a string}}, got {json.dumps(message)[:120]}'
            )
        messages.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise ConfigError(f"{where}: 'messages' has no assistant turn: nothing to learn")
    return tuple(messages)


def split_records(
    records: list[Record], fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """A deterministic hold-out split (as data.prepare.split): the same seed, the same split."""
    order = np.random.default_rng(seed).permutation(len(records))
    held_out = max(1, round(len(records) * fraction))
    if held_out >= len(records):
        raise ConfigError(f"data.validationSplit {fraction} leaves no training records")
    return [records[i] for i in order[held_out:]], [records[i] for i in order[:held_out]]


# -- encoding --------------------------------------------------------------------------


def encode(
    records: list[Record], tokenizer: PreTrainedTokenizerBase, *, max_length: int, field: str
) -> TensorDataset:
    """Token rows, right-padded to the longest (at most `max_length`); rows with nothing
    left to learn after truncation are dropped."""
    rows: list[tuple[list[int], list[int]]] = []
    stream: list[int] = []
    for record in records:
        if record.text is not None:
            stream += [*_tokens(tokenizer, record.text), _eos(tokenizer)]
        elif record.messages:
            rows.append(encode_chat(record, tokenizer))
        else:
            prompt = _tokens(tokenizer, record.prompt or "")
            response = [*_tokens(tokenizer, record.response or ""), _eos(tokenizer)]
            rows.append((prompt + response, [IGNORE] * len(prompt) + response))
    rows += [(c, list(c)) for c in _chunks(stream, max_length)]
    rows = [(ids[:max_length], labels[:max_length]) for ids, labels in rows]
    rows = [(ids, labels) for ids, labels in rows if any(t != IGNORE for t in labels[1:])]
    if not rows:
        raise ConfigError(
            f"{field}: no record has a token to learn within {max_length} tokens; "
            "raise params.max_length"
        )
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos(tokenizer)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, targets) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(targets)
        mask[row, : len(ids)] = 1
    return TensorDataset(input_ids, labels, mask)


def encode_chat(record: Record, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The conversation through the chat template; labels on the assistant turns only.

    Each assistant turn's characters lie between the conversation rendered up to the
    turn (with the generation prompt) and rendered through it; a token is learnt when
    it starts inside such a span. This works for any template that renders a
    conversation's beginning as a prefix of the whole (ChatML, Llama, Mistral...)."""
    if tokenizer.chat_template is None:
        raise ConfigError(
            f"{record.where}: chat 'messages' need a tokenizer with a chat template, and "
            "the model's has none; use 'prompt'/'response' records"
        )
    messages = list(record.messages)
    full = _render(tokenizer, messages, generation_prompt=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1], generation_prompt=False)
        if not (full.startswith(through) and through.startswith(before)):
            raise ConfigError(
                f"{record.where}: the tokenizer's chat template does not render this "
                "conversation's beginning as a prefix of the whole, so the assistant "
                "turns cannot be found; use 'prompt'/'response' records"
            )
        spans.append((len(before), len(through)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoded["input_ids"]
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE
        for token, (begin, _) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return ids, labels


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], *, generation_prompt: bool
) -> str:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    return str(text)


def _tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _eos(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise ConfigError("model.init.uri: the model's tokenizer has no end-of-sequence token")
    return int(tokenizer.eos_token_id)


def _chunks(stream: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(stream), size):
        chunk = stream[start : start + size]
        if len(chunk) > 1:
            yield chunk
