"""The OpenAI API for language models: `/v1/completions`, `/v1/chat/completions` and
`/v1/models` requests parsed into frozen dataclasses, responses and stream chunks built as
plain dicts in exactly the shapes the official `openai` client parses. No torch, no Ray: the
server puts a model behind it, the tables of bad requests are tested without one.

Every bad request is an `OpenAIError` (status 400) whose body is OpenAI's error object,
`{"error": {"message", "type", "param", "code"}}`, with `param` naming the field (a path such
as `messages[2].content[0].type` when it is nested) and a message saying what is accepted.
Refused features carry `code` "unsupported_parameter" or "unsupported_value"; plain
invalid values carry no code, as OpenAI's own validation errors mostly do.

Fields that are unknown to this module are ignored, since OpenAI clients send extras
(`user`, `metadata`, `store`, `service_tier`, `parallel_tool_calls`, `prediction`,
`reasoning_effort`, ...) that do not change the generated text here. Fields that would
change the output in a way this server cannot honour are refused rather than silently
dropped, so a client never gets text it did not ask for:

| field | accepted | why others are refused |
|---|---|---|
| `tools`, `functions` | absent, null or [] | no tool calling: the model would answer in prose |
| `tool_choice`, `function_call` | absent, null, "none", "auto" | the same |
| `response_format` | absent, null, {"type": "text"} | no constrained (JSON) decoding |
| `logprobs` | absent, null, false | log-probabilities are not returned |
| `top_logprobs` | absent, null, 0 | the same |
| `logit_bias` | absent, null, {} | sampling does not take token biases |
| `frequency_penalty`, `presence_penalty` | absent, null, 0 | sampling has no penalties |
| `best_of` (completions) | absent, null, equal to `n` | no server-side candidate ranking |
| `suffix` (completions) | absent, null, "" | no insertion (fill-in-the-middle) |
| `audio`, `modalities` | absent, null, ["text"] | text generation only |
| message role "tool"/"function", `tool_calls` | never | no tool calling |
| image, audio or file content parts | never | text models only |

`echo` (completions) is supported: the server prepends the prompt's text to each choice
(to the first chunk of each choice when streaming). The role "developer" (OpenAI's newer
name for "system") is accepted and normalised to "system", so a chat template sees only
"system", "user" and "assistant".

What the request alone cannot tell is the server's to check: whether `model` is served
(404 "model_not_found"), token ids within the vocabulary, prompt plus `max_tokens` within
the context length.

https://platform.openai.com/docs/api-reference/chat/create
https://platform.openai.com/docs/api-reference/completions/create
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_STOP = 4  # OpenAI's limit on stop strings
MAX_N = 8  # ours: each choice is a sequence in the batch
ROLES = ("system", "user", "assistant")
# Roles the model accepts under another name; the chat template sees the canonical one.
ROLE_ALIASES = {"developer": "system"}
TEXT_PART_SEPARATOR = "\n"  # joins a message's text parts, as vLLM does
SSE_DONE: bytes = b"data: [DONE]\n\n"
INT64 = 1 << 63


class OpenAIError(Exception):
    """A request the server cannot answer, in OpenAI's error shape and with its status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        # Retry-After is whole seconds; 0 would invite an immediate retry storm.
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int  # resolved: the request's, or the server's default
    temperature: float  # 0 = greedy; OpenAI's default is 1.0
    top_p: float  # in (0, 1]
    stop: tuple[str, ...]  # at most MAX_STOP non-empty strings, never emitted
    seed: int | None
    n: int  # choices per request, 1..MAX_N
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with usage

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str | tuple[int, ...]  # text, or token ids
    params: SamplingParams
    echo: bool  # prepend the prompt's text to each choice


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[dict[str, str], ...]  # {"role": system|user|assistant, "content": str}
    params: SamplingParams


def parse_json_body(body: bytes) -> Any:
    """The decoded JSON body (any JSON value; the parsers check it is an object)."""
    if not body.strip():
        raise OpenAIError(400, "The request body is empty; send a JSON object.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OpenAIError(400, f"The request body is not UTF-8 text: {exc}.") from exc
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise OpenAIError(400, f"The request body is not valid JSON: {exc}.") from exc


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, and neither do we.
    raise ValueError(f"{name} is not a JSON value")


def parse_completion(
    payload: Any, *, default_max_tokens: int, max_tokens_limit: int
) -> CompletionRequest:
    body = _object(payload)
    model, prompt = _model(body), _prompt(body.get("prompt"))
    params = _sampling(
        body,
        max_tokens=_max_tokens(body, "max_tokens", max_tokens_limit),
        default=default_max_tokens,
    )
    _refuse_unsupported(body)
    best_of = body.get("best_of")
    if best_of is not None and not (_is_int(best_of) and best_of == params.n):
        raise _unsupported(
            "best_of",
            f"best_of {_show(best_of)} is not supported: this server does not generate "
            "candidates to rank; omit best_of or set it equal to n.",
        )
    suffix = body.get("suffix")
    if suffix is not None and suffix != "":
        raise _unsupported(
            "suffix",
            f"suffix {_show(suffix)} is not supported: this server does no insertion "
            "(fill-in-the-middle); omit it.",
        )
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise _invalid("echo", f"echo must be true or false; got {_show(echo)}.")
    return CompletionRequest(model=model, prompt=prompt, params=params, echo=bool(echo))


def parse_chat(payload: Any, *, default_max_tokens: int, max_tokens_limit: int) -> ChatRequest:
    body = _object(payload)
    model, messages = _model(body), _messages(body.get("messages"))
    old = _max_tokens(body, "max_tokens", max_tokens_limit)
    new = _max_tokens(body, "max_completion_tokens", max_tokens_limit)
    if old is not None and new is not None and old != new:
        raise _invalid(
            "max_completion_tokens",
            f"max_tokens ({old}) and max_completion_tokens ({new}) differ; send only "
            "max_completion_tokens (the newer name for the same limit).",
        )
    params = _sampling(body, max_tokens=new if new is not None else old, default=default_max_tokens)
    _refuse_unsupported(body)
    return ChatRequest(model=model, messages=messages, params=params)


def _object(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise OpenAIError(
            400, f"The request body must be a JSON object; got {_json_type(payload)}."
        )
    return payload


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid(
            "model",
            "model is required: a non-empty string naming a served model (see GET /v1/models); "
            f"got {_show(model)}.",
        )
    return model


def _prompt(value: Any) -> str | tuple[int, ...]:
    accepted = "a non-empty string, or one non-empty list of token ids"
    if isinstance(value, str):
        if not value:
            raise _invalid("prompt", f"prompt is empty; send {accepted}.")
        return value
    if not isinstance(value, list):
        raise _invalid("prompt", f"prompt must be {accepted}; got {_show(value)}.")
    if not value:
        raise _invalid("prompt", f"prompt is an empty list; send {accepted}.")
    if all(isinstance(item, str | list) for item in value):
        # A batch of prompts: one string, or one list of ids, is that prompt.
        if len(value) > 1:
            raise _invalid(
                "prompt",
                f"prompt holds {len(value)} prompts; only one prompt per request is served. "
                "Send one request per prompt: concurrent requests are batched together.",
            )
        inner = value[0]
        return _prompt(inner) if isinstance(inner, str) else _token_ids(inner, "prompt[0]")
    return _token_ids(value, "prompt")


def _token_ids(values: list[Any], param: str) -> tuple[int, ...]:
    if not values:
        raise _invalid(param, f"{param} is an empty list of token ids; send at least one.")
    for i, token in enumerate(values):
        if not _is_int(token) or token < 0:
            raise _invalid(
                f"{param}[{i}]",
                f"{param}[{i}] must be a token id (an integer >= 0); got {_show(token)}.",
            )
    return tuple(values)


def _messages(value: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise _invalid(
            "messages",
            'messages is required: a non-empty list of {"role", "content"} objects; '
            f"got {_show(value)}.",
        )
    return tuple(_message(message, f"messages[{i}]") for i, message in enumerate(value))


def _message(message: Any, path: str) -> dict[str, str]:
    if not isinstance(message, dict):
        raise _invalid(
            path, f"{path} must be an object with role and content; got {_show(message)}."
        )
    role = message.get("role")
    if role in ("tool", "function"):
        raise _unsupported(
            f"{path}.role",
            f"{path}.role {role!r} is not supported: this server does no tool calling; "
            f"roles accepted: {', '.join(ROLES)}.",
            code="unsupported_value",
        )
    role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
    if role not in ROLES:
        raise _invalid(
            f"{path}.role", f"{path}.role must be one of {', '.join(ROLES)}; got {_show(role)}."
        )
    if message.get("tool_calls") or message.get("function_call"):
        raise _unsupported(
            f"{path}.tool_calls",
            f"{path} carries tool calls; this server does no tool calling.",
        )
    return {"role": role, "content": _content(message.get("content"), f"{path}.content")}


def _content(content: Any, path: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid(
            path, f"{path} must be a string or a list of text parts; got {_show(content)}."
        )
    return TEXT_PART_SEPARATOR.join(
        _text_part(part, f"{path}[{i}]") for i, part in enumerate(content)
    )


def _text_part(part: Any, path: str) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if isinstance(kind, str) and kind != "text":
        raise _unsupported(
            f"{path}.type",
            f"{path} is a {kind!r} part; only text parts are supported by this text-only model.",
            code="unsupported_value",
        )
    text = part.get("text") if kind == "text" else None
    if not isinstance(text, str):
        raise _invalid(
            path,
            f'{path} must be a text part {{"type": "text", "text": "..."}}; got {_show(part)}.',
        )
    return text


def _max_tokens(body: dict[str, Any], param: str, limit: int) -> int | None:
    value = body.get(param)
    if value is None:
        return None
    if not _is_int(value) or not 1 <= value <= limit:
        raise _invalid(
            param,
            f"{param} must be an integer from 1 to {limit} (this server's limit); "
            f"got {_show(value)}.",
        )
    return int(value)


def _sampling(body: dict[str, Any], *, max_tokens: int | None, default: int) -> SamplingParams:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream", f"stream must be true or false; got {_show(stream)}.")
    return SamplingParams(
        max_tokens=default if max_tokens is None else max_tokens,
        temperature=_number(body, "temperature", 1.0, low=0.0, high=2.0, low_open=False),
        top_p=_number(body, "top_p", 1.0, low=0.0, high=1.0, low_open=True),
        stop=_stop(body.get("stop")),
        seed=_seed(body.get("seed")),
        n=_n(body.get("n")),
        stream=bool(stream),
        include_usage=_include_usage(body.get("stream_options"), stream=bool(stream)),
    )


def _number(
    body: dict[str, Any], param: str, default: float, *, low: float, high: float, low_open: bool
) -> float:
    value = body.get(param)
    if value is None:
        return default
    above_low = _is_number(value) and (value > low if low_open else value >= low)
    if not above_low or value > high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise _invalid(param, f"{param} must be a number in {interval}; got {_show(value)}.")
    return float(value)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise _invalid(
            "stop",
            f"stop must be a non-empty string or a list of at most {MAX_STOP} non-empty "
            f"strings; got {_show(value)}.",
        )
    return tuple(stops)


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not -INT64 <= value < INT64:
        raise _invalid("seed", f"seed must be a 64-bit integer; got {_show(value)}.")
    return int(value)


def _n(value: Any) -> int:
    if value is None:
        return 1
    if not _is_int(value) or not 1 <= value <= MAX_N:
        raise _invalid(
            "n",
            f"n must be an integer from 1 to {MAX_N} (this server's limit: each choice is a "
            f"sequence in the batch); got {_show(value)}.",
        )
    return int(value)


def _include_usage(options: Any, *, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise _invalid(
            "stream_options", "stream_options is only allowed with stream: true; omit it."
        )
    include = options.get("include_usage") if isinstance(options, dict) else None
    if not isinstance(options, dict) or (include is not None and not isinstance(include, bool)):
        raise _invalid(
            "stream_options",
            'stream_options must be an object like {"include_usage": true}; '
            f"got {_show(options)}.",
        )
    return bool(include)


# Fields that would change the output in a way this server cannot honour: the value each
# accepts (a predicate), and why anything else is refused. The module docstring's table.
_TOOLS = "this server does no tool calling"
_REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tools": (lambda v: not v, f"{_TOOLS}; omit it"),
    "functions": (lambda v: not v, f"{_TOOLS}; omit it"),
    "tool_choice": (lambda v: v in (None, "none", "auto"), f'{_TOOLS}; omit it or send "none"'),
    "function_call": (lambda v: v in (None, "none", "auto"), f'{_TOOLS}; omit it or send "none"'),
    "response_format": (
        lambda v: v in (None, {"type": "text"}),
        'this server generates plain text only; omit it or send {"type": "text"}',
    ),
    "logprobs": (
        lambda v: v is None or v is False,
        "this server returns no log-probabilities; omit it",
    ),
    "top_logprobs": (
        lambda v: v is None or (_is_int(v) and v == 0),
        "this server returns no log-probabilities; omit it",
    ),
    "logit_bias": (lambda v: not v, "sampling does not take token biases; omit it"),
    "frequency_penalty": (
        lambda v: v is None or (_is_number(v) and v == 0),
        "sampling has no penalties; omit it or send 0",
    ),
    "presence_penalty": (
        lambda v: v is None or (_is_number(v) and v == 0),
        "sampling has no penalties; omit it or send 0",
    ),
    "audio": (lambda v: v is None, "this server generates text only; omit it"),
    "modalities": (
        lambda v: v in (None, ["text"]),
        'this server generates text only; omit it or send ["text"]',
    ),
}


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for param, (harmless, reason) in _REFUSED.items():
        value = body.get(param)
        if not harmless(value):
            raise _unsupported(param, f"{param} {_show(value)} is not supported: {reason}.")


def _invalid(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param)


def _unsupported(param: str, message: str, *, code: str = "unsupported_parameter") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def _is_int(value: Any) -> bool:
    # JSON true/false arrive as bool, which Python counts as int; they are not counts.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # json gives int or float; NaN and Infinity are refused on parsing, but not every
    # payload comes through parse_json_body.
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _show(value: Any) -> str:
    """The value as the client wrote it (JSON), cut short."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class StopMatcher:
    """Incremental stop-string matching over streamed text.

    Text that could still turn out to be the start of a stop string is held back until
    the next piece decides it; a complete stop string ends the stream, and neither it nor
    anything after it is emitted (as OpenAI does). Stop strings are matched in the text,
    so one may span several tokens.
    """

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string completed). After a stop, every
        further feed returns ("", True): the server should end the sequence."""
        if self.stopped:
            return "", True
        buffer = self._held + text
        hits = [i for i in (buffer.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped, self._held = True, ""
            return buffer[: min(hits)], True
        hold = self._partial_suffix(buffer)
        self._held = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """The held-back text, at the end of a generation that did not stop."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_suffix(self, buffer: str) -> int:
        # Length of the longest suffix of `buffer` that is a proper prefix of a stop string.
        longest = max((len(s) for s in self._stop), default=1) - 1
        for size in range(min(longest, len(buffer)), 0, -1):
            tail = buffer[-size:]
            if any(s.startswith(tail) for s in self._stop):
                return size
        return 0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int  # over all n choices

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


def completion_body(
    *, id: str, created: int, model: str, choices: list[tuple[int, str, str]], usage: Usage
) -> dict[str, Any]:
    """A `/v1/completions` answer; each choice is (index, text, finish_reason), the
    finish_reason "stop" (end of text or a stop string) or "length" (max_tokens)."""
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
            for index, text, finish in choices
        ],
        "usage": usage.as_dict(),
    }


def chat_body(
    *, id: str, created: int, model: str, choices: list[tuple[int, str, str]], usage: Usage
) -> dict[str, Any]:
    """A `/v1/chat/completions` answer; choices as in `completion_body`."""
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            for index, text, finish in choices
        ],
        "usage": usage.as_dict(),
    }


def completion_chunk(
    *, id: str, created: int, model: str, index: int, text: str, finish_reason: str | None
) -> dict[str, Any]:
    """One streamed piece of a completion choice. Every chunk of a stream shares `id`,
    `created` and `model`. A choice's pieces carry finish_reason None; its last chunk
    carries "stop" or "length" (with the last piece of text, or ""). With echo, the
    first chunk of each choice carries the prompt's text."""
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
        ],
    }


def chat_chunk(
    *,
    id: str,
    created: int,
    model: str,
    index: int,
    delta: dict[str, str],
    finish_reason: str | None,
) -> dict[str, Any]:
    """One streamed piece of a chat choice, as OpenAI streams it. For each choice index:

    1. first, delta {"role": "assistant", "content": ""} with finish_reason None;
    2. then delta {"content": piece} for each piece of text, finish_reason None;
    3. last, delta {} with finish_reason "stop" or "length".

    Then, once every choice has finished: `usage_chunk(object="chat.completion.chunk")`
    if the request set stream_options.include_usage, and `SSE_DONE`.
    """
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ],
    }


def usage_chunk(*, id: str, created: int, model: str, object: str, usage: Usage) -> dict[str, Any]:
    """The stream's last chunk before `SSE_DONE` when include_usage is set: no choices,
    the usage of the whole request. `object` is the stream's: "text_completion" or
    "chat.completion.chunk"."""
    if object not in ("text_completion", "chat.completion.chunk"):
        raise ValueError(f"object must be text_completion or chat.completion.chunk, not {object!r}")
    return {
        "id": id,
        "object": object,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage.as_dict(),
    }


def models_body(models: list[tuple[str, int, str]]) -> dict[str, Any]:
    """`GET /v1/models`: each model as (id, created, owned_by)."""
    return {
        "object": "list",
        "data": [
            {"id": model, "object": "model", "created": created, "owned_by": owner}
            for model, created, owner in models
        ],
    }


def sse(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying `obj` as compact JSON (UTF-8, as SSE requires)."""
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def new_id(prefix: str) -> str:
    """A response id such as "cmpl-<hex>" or "chatcmpl-<hex>"."""
    return f"{prefix}-{secrets.token_hex(12)}"
