"""OpenAI requests become frozen dataclasses or a 400 in OpenAI's error shape naming the field;
responses and stream chunks are what the official `openai` client parses. No model, no Ray."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from typing import Any

import httpx2  # the HTTP library the openai client is built on
import openai
import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from modelplane_runtime.serve.openai_protocol import (
    SSE_DONE,
    ChatRequest,
    CompletionRequest,
    OpenAIError,
    SamplingParams,
    StopMatcher,
    Usage,
    chat_body,
    chat_chunk,
    completion_body,
    completion_chunk,
    models_body,
    new_id,
    parse_chat,
    parse_completion,
    parse_json_body,
    sse,
    usage_chunk,
)

DEFAULT_MAX_TOKENS = 16
LIMIT = 256
DROP = object()  # an override that removes the field


def make_completion(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "tiny-gpt", "prompt": "Once upon a time"}
    return _apply(body, overrides)


def make_chat(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "tiny-gpt", "messages": [{"role": "user", "content": "Hi"}]}
    return _apply(body, overrides)


def _apply(body: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if value is DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def completion(payload: Any) -> CompletionRequest:
    return parse_completion(payload, default_max_tokens=DEFAULT_MAX_TOKENS, max_tokens_limit=LIMIT)


def chat(payload: Any) -> ChatRequest:
    return parse_chat(payload, default_max_tokens=DEFAULT_MAX_TOKENS, max_tokens_limit=LIMIT)


def params(**overrides: Any) -> SamplingParams:
    defaults: dict[str, Any] = {
        "max_tokens": DEFAULT_MAX_TOKENS,
        "temperature": 1.0,
        "top_p": 1.0,
        "stop": (),
        "seed": None,
        "n": 1,
        "stream": False,
        "include_usage": False,
    }
    return SamplingParams(**{**defaults, **overrides})


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


UNSUPPORTED = "unsupported_parameter"
UNSUPPORTED_VALUE = "unsupported_value"

# (parser, payload, param, a word of the message, code)
MALFORMED = [
    pytest.param(completion, ["not", "an", "object"], None, "JSON object", None,
                 id="a body that is an array is refused"),
    pytest.param(chat, "hello", None, "JSON object", None,
                 id="a body that is a string is refused on chat too"),
    pytest.param(completion, make_completion(model=DROP), "model", "required", None,
                 id="a completion without a model is refused"),
    pytest.param(chat, make_chat(model=""), "model", "non-empty", None,
                 id="an empty model name is refused"),
    pytest.param(chat, make_chat(model=7), "model", "string", None,
                 id="a model that is a number is refused"),
    pytest.param(completion, make_completion(prompt=DROP), "prompt", "token ids", None,
                 id="a completion without a prompt is refused"),
    pytest.param(completion, make_completion(prompt=""), "prompt", "empty", None,
                 id="an empty prompt is refused"),
    pytest.param(completion, make_completion(prompt=[]), "prompt", "empty list", None,
                 id="an empty prompt list is refused"),
    pytest.param(completion, make_completion(prompt={"text": "hi"}), "prompt", "string", None,
                 id="a prompt that is an object is refused"),
    pytest.param(completion, make_completion(prompt=["a", "b"]), "prompt", "one prompt per request",
                 None, id="several prompts in one request are refused"),
    pytest.param(completion, make_completion(prompt=[[1, 2], [3]]), "prompt",
                 "one prompt per request", None, id="several token-id prompts are refused"),
    pytest.param(completion, make_completion(prompt=[1, "x"]), "prompt[1]", "token id", None,
                 id="a token id that is a string is refused"),
    pytest.param(completion, make_completion(prompt=[5, -2]), "prompt[1]", ">= 0", None,
                 id="a negative token id is refused"),
    pytest.param(completion, make_completion(prompt=[[7, True]]), "prompt[0][1]", "token id",
                 None, id="a boolean token id in a list of one is refused"),
    pytest.param(completion, make_completion(max_tokens=True), "max_tokens", "integer", None,
                 id="max_tokens true is not a count"),
    pytest.param(completion, make_completion(max_tokens=0), "max_tokens", "from 1", None,
                 id="max_tokens 0 is refused"),
    pytest.param(completion, make_completion(max_tokens=LIMIT + 1), "max_tokens", str(LIMIT),
                 None, id="max_tokens above the limit is refused and the limit stated"),
    pytest.param(completion, make_completion(max_tokens=8.0), "max_tokens", "integer", None,
                 id="max_tokens that is a float is refused"),
    pytest.param(chat, make_chat(max_completion_tokens=0), "max_completion_tokens", "from 1",
                 None, id="max_completion_tokens 0 is refused"),
    pytest.param(chat, make_chat(max_tokens=10, max_completion_tokens=20),
                 "max_completion_tokens", "differ", None,
                 id="max_tokens and max_completion_tokens that differ are refused"),
    pytest.param(completion, make_completion(temperature=2.5), "temperature", "[0, 2]", None,
                 id="a temperature above 2 is refused"),
    pytest.param(chat, make_chat(temperature=-0.1), "temperature", "[0, 2]", None,
                 id="a negative temperature is refused"),
    pytest.param(chat, make_chat(temperature="hot"), "temperature", "number", None,
                 id="a temperature that is a string is refused"),
    pytest.param(completion, make_completion(top_p=0), "top_p", "(0, 1]", None,
                 id="top_p 0 is refused"),
    pytest.param(chat, make_chat(top_p=1.5), "top_p", "(0, 1]", None,
                 id="top_p above 1 is refused"),
    pytest.param(completion, make_completion(n=9), "n", "1 to 8", None,
                 id="n above our limit of 8 is refused and the limit stated"),
    pytest.param(chat, make_chat(n=0), "n", "1 to 8", None, id="n 0 is refused"),
    pytest.param(chat, make_chat(n=True), "n", "integer", None, id="n true is not a count"),
    pytest.param(completion, make_completion(stop=["a", "b", "c", "d", "e"]), "stop",
                 "at most 4", None, id="five stop strings are refused"),
    pytest.param(chat, make_chat(stop=[""]), "stop", "non-empty", None,
                 id="an empty stop string is refused"),
    pytest.param(chat, make_chat(stop=3), "stop", "string", None,
                 id="a stop that is a number is refused"),
    pytest.param(completion, make_completion(seed="42"), "seed", "integer", None,
                 id="a seed that is a string is refused"),
    pytest.param(chat, make_chat(seed=2**64), "seed", "64-bit", None,
                 id="a seed beyond 64 bits is refused"),
    pytest.param(completion, make_completion(stream="yes"), "stream", "true or false", None,
                 id="stream that is a string is refused"),
    pytest.param(chat, make_chat(stream_options={"include_usage": True}), "stream_options",
                 "stream: true", None, id="stream_options without stream is refused"),
    pytest.param(chat, make_chat(stream=True, stream_options={"include_usage": "yes"}),
                 "stream_options", "include_usage", None,
                 id="include_usage that is not a boolean is refused"),
    pytest.param(completion, make_completion(echo="yes"), "echo", "true or false", None,
                 id="echo that is a string is refused"),
    pytest.param(completion, make_completion(best_of=3), "best_of", "not supported", UNSUPPORTED,
                 id="best_of is refused as not supported"),
    pytest.param(completion, make_completion(suffix="The end."), "suffix", "not supported",
                 UNSUPPORTED, id="suffix is refused as not supported"),
    pytest.param(completion, make_completion(logprobs=0), "logprobs", "log-probabilities",
                 UNSUPPORTED, id="completion logprobs 0 is refused: it still asks for logprobs"),
    pytest.param(chat, make_chat(logprobs=True), "logprobs", "not supported", UNSUPPORTED,
                 id="chat logprobs true is refused as not supported"),
    pytest.param(chat, make_chat(top_logprobs=3), "top_logprobs", "not supported", UNSUPPORTED,
                 id="top_logprobs is refused as not supported"),
    pytest.param(completion, make_completion(logit_bias={"50256": -100}), "logit_bias",
                 "token biases", UNSUPPORTED, id="a non-empty logit_bias is refused"),
    pytest.param(completion, make_completion(frequency_penalty=0.5), "frequency_penalty",
                 "penalties", UNSUPPORTED, id="a non-zero frequency_penalty is refused"),
    pytest.param(chat, make_chat(presence_penalty=-1), "presence_penalty", "penalties",
                 UNSUPPORTED, id="a non-zero presence_penalty is refused"),
    pytest.param(chat, make_chat(response_format={"type": "json_object"}), "response_format",
                 "plain text", UNSUPPORTED, id="a JSON response_format is refused"),
    pytest.param(chat, make_chat(tools=[{"type": "function", "function": {"name": "f"}}]),
                 "tools", "tool calling", UNSUPPORTED, id="tools are refused"),
    pytest.param(chat, make_chat(tool_choice="required"), "tool_choice", "tool calling",
                 UNSUPPORTED, id="tool_choice required is refused"),
    pytest.param(chat, make_chat(modalities=["text", "audio"]), "modalities", "text only",
                 UNSUPPORTED, id="audio output is refused"),
    pytest.param(chat, make_chat(messages=DROP), "messages", "required", None,
                 id="a chat without messages is refused"),
    pytest.param(chat, make_chat(messages=[]), "messages", "non-empty", None,
                 id="an empty message list is refused"),
    pytest.param(chat, make_chat(messages="Hi"), "messages", "list", None,
                 id="messages that is a string is refused"),
    pytest.param(chat, make_chat(messages=["Hi"]), "messages[0]", "object", None,
                 id="a message that is a string is refused"),
    pytest.param(chat, make_chat(messages=[{"content": "Hi"}]), "messages[0].role", "one of",
                 None, id="a message without a role is refused"),
    pytest.param(chat, make_chat(messages=[user("a"), {"role": "wizard", "content": "b"}]),
                 "messages[1].role", "system, user, assistant", None,
                 id="an unknown role is refused naming the accepted ones"),
    pytest.param(chat, make_chat(messages=[{"role": "tool", "content": "42",
                                            "tool_call_id": "c1"}]),
                 "messages[0].role", "not supported", UNSUPPORTED_VALUE,
                 id="a tool message is refused as not supported"),
    pytest.param(chat, make_chat(messages=[{"role": "assistant", "content": None,
                                            "tool_calls": [{"id": "c1"}]}]),
                 "messages[0].tool_calls", "tool calling", UNSUPPORTED,
                 id="an assistant message with tool calls is refused"),
    pytest.param(chat, make_chat(messages=[{"role": "user"}]), "messages[0].content",
                 "text parts", None, id="a message without content is refused"),
    pytest.param(chat, make_chat(messages=[user(5)]), "messages[0].content", "string", None,
                 id="content that is a number is refused"),
    pytest.param(chat, make_chat(messages=[user([{"type": "text", "text": "Look:"},
                                                 {"type": "image_url",
                                                  "image_url": {"url": "http://x/y.png"}}])]),
                 "messages[0].content[1].type", "only text parts", UNSUPPORTED_VALUE,
                 id="an image part is refused as not supported"),
    pytest.param(chat, make_chat(messages=[user([{"type": "text", "text": 3}])]),
                 "messages[0].content[0]", "text part", None,
                 id="a text part whose text is not a string is refused"),
    pytest.param(chat, make_chat(messages=[user(["Hi"])]), "messages[0].content[0]",
                 "text part", None, id="a part that is a bare string is refused"),
]  # fmt: skip


@pytest.mark.parametrize(("parse", "payload", "param", "word", "code"), MALFORMED)
def test_malformed_requests_are_400s_in_openais_error_shape_naming_the_field(
    parse: Any, payload: Any, param: str | None, word: str, code: str | None
) -> None:
    with pytest.raises(OpenAIError) as caught:
        parse(payload)
    error = caught.value
    body = error.body()
    assert error.status == 400
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert body["error"]["code"] == code
    assert word in body["error"]["message"]
    assert error.headers() == {}


def test_a_completion_with_only_model_and_prompt_takes_the_defaults() -> None:
    assert completion(make_completion()) == CompletionRequest(
        model="tiny-gpt", prompt="Once upon a time", params=params(), echo=False
    )


def test_every_sampling_field_is_carried_into_the_params() -> None:
    request = completion(
        make_completion(
            max_tokens=32,
            temperature=0,
            top_p=0.9,
            stop="\n",
            seed=7,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
            echo=True,
        )
    )
    assert request.echo is True
    assert request.params == params(
        max_tokens=32,
        temperature=0.0,
        top_p=0.9,
        stop=("\n",),
        seed=7,
        n=2,
        stream=True,
        include_usage=True,
    )
    assert request.params.greedy
    assert isinstance(request.params.temperature, float)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        pytest.param(["Hello"], "Hello", id="a list of one string is that string"),
        pytest.param([1, 2, 3], (1, 2, 3), id="a list of token ids is kept as ids"),
        pytest.param([[4, 0]], (4, 0), id="a list of one list of ids is those ids"),
    ],
)
def test_prompts_in_the_shapes_the_client_sends(prompt: Any, expected: Any) -> None:
    assert completion(make_completion(prompt=prompt)).prompt == expected


def test_harmless_and_unknown_fields_are_ignored() -> None:
    harmless = {
        "user": "u-1",
        "frequency_penalty": 0,
        "presence_penalty": 0.0,
        "logit_bias": {},
        "logprobs": None,
        "best_of": 1,
        "suffix": None,
        "tools": [],
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "metadata": {"team": "a"},
        "some_future_field": [1, 2],
        "stream": False,
        "stream_options": None,
        "max_tokens": None,
    }
    assert completion(make_completion(**harmless)).params == params()
    assert chat(make_chat(**{**harmless, "logprobs": False, "top_logprobs": 0})).params == params()


def test_chat_messages_are_normalised_to_role_and_string_content() -> None:
    request = chat(
        make_chat(
            messages=[
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "name": "ann", "content": [
                    {"type": "text", "text": "First part."},
                    {"type": "text", "text": "Second part."},
                ]},
                {"role": "assistant", "content": ""},
            ]
        )
    )  # fmt: skip
    assert request.messages == (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First part.\nSecond part."},
        {"role": "assistant", "content": ""},
    )


@pytest.mark.parametrize(
    ("fields", "max_tokens"),
    [
        pytest.param({}, DEFAULT_MAX_TOKENS, id="neither falls back to the default"),
        pytest.param({"max_tokens": 40}, 40, id="max_tokens alone is used"),
        pytest.param({"max_completion_tokens": 50}, 50, id="max_completion_tokens alone is used"),
        pytest.param(
            {"max_tokens": 60, "max_completion_tokens": 60}, 60, id="both equal are accepted"
        ),
        pytest.param({"max_completion_tokens": LIMIT}, LIMIT, id="the limit itself is accepted"),
    ],
)
def test_chat_max_tokens_under_either_name(fields: dict[str, Any], max_tokens: int) -> None:
    assert chat(make_chat(**fields)).params.max_tokens == max_tokens


def test_parse_json_body_returns_any_json_value() -> None:
    assert parse_json_body(b' {"model": "m", "prompt": "\xc3\xa9"} ') == {
        "model": "m",
        "prompt": "é",
    }
    assert parse_json_body(b"[1]") == [1]


@pytest.mark.parametrize(
    ("body", "word"),
    [
        pytest.param(b"", "empty", id="an empty body"),
        pytest.param(b"  \n", "empty", id="a blank body"),
        pytest.param(b'{"model": ', "not valid JSON", id="truncated JSON"),
        pytest.param(b"\xff\xfe{}", "UTF-8", id="a body that is not UTF-8"),
        pytest.param(b'{"temperature": NaN}', "not valid JSON", id="NaN, which JSON lacks"),
    ],
)
def test_bodies_that_are_not_json_are_400s(body: bytes, word: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        parse_json_body(body)
    assert caught.value.status == 400
    assert caught.value.body()["error"]["param"] is None
    assert word in caught.value.message


def test_an_error_with_a_retry_delay_says_when_in_whole_seconds() -> None:
    error = OpenAIError(
        429, "Too many sequences.", type="rate_limit_error", code="overloaded", retry_after_s=2.2
    )
    assert error.body() == {
        "error": {
            "message": "Too many sequences.",
            "type": "rate_limit_error",
            "param": None,
            "code": "overloaded",
        }
    }
    assert error.headers() == {"Retry-After": "3"}
    assert OpenAIError(503, "Busy.", retry_after_s=0.01).headers() == {"Retry-After": "1"}
    assert str(error) == "Too many sequences."


def feed_all(matcher: StopMatcher, pieces: list[str]) -> list[tuple[str, bool]]:
    return [matcher.feed(piece) for piece in pieces]


def test_a_stop_string_split_across_many_feeds_is_held_back_and_never_emitted() -> None:
    matcher = StopMatcher(("</s>",))
    assert feed_all(matcher, ["Hello <", "/", "s", ">tail"]) == [
        ("Hello ", False),
        ("", False),
        ("", False),
        ("", True),
    ]
    assert matcher.feed("more") == ("", True)
    assert matcher.flush() == ""


def test_a_prefix_that_turns_out_not_to_be_a_stop_is_released() -> None:
    matcher = StopMatcher(("STOP",))
    assert feed_all(matcher, ["go ST", "O", "RE"]) == [
        ("go ", False),
        ("", False),
        ("STORE", False),
    ]
    assert matcher.flush() == ""


def test_overlapping_prefixes_release_only_what_cannot_start_the_stop() -> None:
    matcher = StopMatcher(("aab",))
    assert feed_all(matcher, ["a", "a", "a", "b"]) == [
        ("", False),
        ("", False),
        ("a", False),
        ("", True),
    ]


def test_with_several_stop_strings_the_earliest_in_the_text_wins() -> None:
    assert StopMatcher(("world", "lo w")).feed("hello world") == ("hel", True)
    assert StopMatcher(("\n\n", "User:")).feed("Sure.\nUser: hi\n\n") == ("Sure.\n", True)


def test_flush_returns_the_held_back_text_when_generation_ends() -> None:
    matcher = StopMatcher(("###",))
    assert matcher.feed("abc##") == ("abc", False)
    assert matcher.flush() == "##"
    assert StopMatcher(()).feed("no stops at all") == ("no stops at all", False)


def test_stop_matching_over_random_chunkings_equals_cutting_the_whole_text() -> None:
    rng = random.Random(20)
    stops = ("#a", "bb#", "abab")
    for _ in range(300):
        text = "".join(rng.choice("ab#") for _ in range(rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 8))))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        matcher = StopMatcher(stops)
        emitted, stopped = "", False
        for piece in pieces:
            out, stopped = matcher.feed(piece)
            emitted += out
            if stopped:
                break
        emitted += matcher.flush()
        assert (emitted, stopped) == (text[: min(hits)] if hits else text, bool(hits)), pieces


USAGE = Usage(prompt_tokens=5, completion_tokens=7)
IDS: dict[str, Any] = {"id": "cmpl-abc", "created": 1_700_000_000, "model": "tiny-gpt"}


def test_usage_totals_prompt_and_completion_tokens() -> None:
    assert USAGE.total_tokens == 12
    assert USAGE.as_dict() == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


def test_a_completion_body_is_what_the_openai_client_parses() -> None:
    body = completion_body(
        **IDS, choices=[(0, " there", "stop"), (1, " was", "length")], usage=USAGE
    )
    parsed = Completion.model_validate(body)
    assert parsed.model_extra == {}
    assert [(c.index, c.text, c.finish_reason) for c in parsed.choices] == [
        (0, " there", "stop"),
        (1, " was", "length"),
    ]
    assert parsed.choices[0].model_extra == {}
    assert parsed.usage is not None
    assert parsed.usage.total_tokens == 12


def test_a_chat_body_is_what_the_openai_client_parses() -> None:
    body = chat_body(**IDS, choices=[(0, "Hello!", "stop")], usage=USAGE)
    parsed = ChatCompletion.model_validate(body)
    assert parsed.object == "chat.completion"
    assert parsed.model_extra == {}
    assert parsed.choices[0].message.role == "assistant"
    assert parsed.choices[0].message.content == "Hello!"
    assert parsed.choices[0].finish_reason == "stop"
    assert parsed.usage is not None
    assert parsed.usage.prompt_tokens == 5


def test_the_last_completion_chunk_is_what_the_openai_client_type_validates() -> None:
    # Only the last chunk: the pieces before it carry finish_reason null, as OpenAI's own
    # stream does, which the client accepts (it does not validate strictly; see the
    # streaming round trip below) although Completion's type says otherwise.
    last = completion_chunk(**IDS, index=1, text=" end", finish_reason="length")
    parsed = Completion.model_validate(last)
    assert (parsed.choices[0].index, parsed.choices[0].text) == (1, " end")
    assert parsed.choices[0].finish_reason == "length"
    assert parsed.choices[0].model_extra == {}


def test_chat_chunks_are_what_the_openai_client_parses_when_streaming() -> None:
    deltas: list[tuple[dict[str, str], str | None]] = [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "Hel"}, None),
        ({}, "stop"),
    ]
    chunks = [
        ChatCompletionChunk.model_validate(
            chat_chunk(**{**IDS, "id": "chatcmpl-1"}, index=0, delta=delta, finish_reason=finish)
        )
        for delta, finish in deltas
    ]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[1].choices[0].delta.content == "Hel"
    assert chunks[1].choices[0].delta.role is None
    assert chunks[2].choices[0].finish_reason == "stop"
    assert all(chunk.model_extra == {} for chunk in chunks)


@pytest.mark.parametrize(
    ("object_", "parser"),
    [
        pytest.param("chat.completion.chunk", ChatCompletionChunk, id="on a chat stream"),
        pytest.param("text_completion", Completion, id="on a completion stream"),
    ],
)
def test_the_usage_chunk_has_no_choices_and_the_usage(object_: str, parser: Any) -> None:
    parsed = parser.model_validate(usage_chunk(**IDS, object=object_, usage=USAGE))
    assert parsed.choices == []
    assert parsed.usage.completion_tokens == 7


def test_a_usage_chunk_for_another_object_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"chat\.completion\.chunk"):
        usage_chunk(**IDS, object="chat.completion", usage=USAGE)


def test_the_models_list_is_what_the_openai_client_parses() -> None:
    body = models_body([("tiny-gpt", 1_700_000_000, "modelplane"), ("tiny-gpt:fr", 1, "me")])
    assert body["object"] == "list"
    models = [Model.model_validate(entry) for entry in body["data"]]
    assert [(m.id, m.object, m.owned_by) for m in models] == [
        ("tiny-gpt", "model", "modelplane"),
        ("tiny-gpt:fr", "model", "me"),
    ]
    assert all(m.model_extra == {} for m in models)


def test_sse_frames_compact_utf8_json_and_done_ends_the_stream() -> None:
    frame = sse({"text": "café", "n": [1, 2]})
    assert frame == 'data: {"text":"café","n":[1,2]}\n\n'.encode()
    assert json.loads(frame.removeprefix(b"data: ")) == {"text": "café", "n": [1, 2]}
    assert SSE_DONE == b"data: [DONE]\n\n"


def test_new_ids_are_prefixed_hex_and_unique() -> None:
    ids = {new_id("chatcmpl") for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{24}", i) for i in ids)


def test_the_protocol_imports_neither_torch_nor_ray() -> None:
    # The server's process has both; only a fresh interpreter shows what this module pulls in.
    code = (
        "import sys, modelplane_runtime.serve.openai_protocol as p; "
        "print(sorted(m for m in ('torch', 'ray', 'pydantic') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


# A scripted model behind the protocol, and the official client in front of it over an
# in-memory transport: requests the client sends must parse, answers must parse back.
SCRIPT = ["Hello", " wor", "ld", "!"]


def fake_server(request: httpx2.Request) -> httpx2.Response:
    try:
        return answer(request)
    except OpenAIError as error:
        return httpx2.Response(error.status, json=error.body(), headers=error.headers())


def answer(request: httpx2.Request) -> httpx2.Response:
    ids: dict[str, Any] = {"created": 1_700_000_000, "model": "tiny-gpt"}
    if request.url.path == "/v1/models":
        return httpx2.Response(200, json=models_body([("tiny-gpt", 1, "modelplane")]))
    payload = parse_json_body(request.content)
    is_chat = request.url.path == "/v1/chat/completions"
    request_ = chat(payload) if is_chat else completion(payload)
    matcher = StopMatcher(request_.params.stop)
    pieces, generated = [], 0
    for token in SCRIPT[: request_.params.max_tokens]:
        generated += 1
        text, stopped = matcher.feed(token)
        pieces.append(text)
        if stopped:
            break
    pieces.append(matcher.flush())
    finish = "stop" if matcher.stopped else "length"
    usage = Usage(prompt_tokens=3, completion_tokens=generated)
    if not request_.params.stream:
        build = chat_body if is_chat else completion_body
        body = build(id=new_id("x"), **ids, choices=[(0, "".join(pieces), finish)], usage=usage)
        return httpx2.Response(200, json=body)
    ids["id"] = new_id("chatcmpl" if is_chat else "cmpl")
    if is_chat:
        chunks = [
            chat_chunk(
                **ids, index=0, delta={"role": "assistant", "content": ""}, finish_reason=None
            )
        ]
        chunks += [
            chat_chunk(**ids, index=0, delta={"content": p}, finish_reason=None)
            for p in pieces
            if p
        ]
        chunks.append(chat_chunk(**ids, index=0, delta={}, finish_reason=finish))
    else:
        chunks = [completion_chunk(**ids, index=0, text=p, finish_reason=None) for p in pieces if p]
        chunks.append(completion_chunk(**ids, index=0, text="", finish_reason=finish))
    if request_.params.include_usage:
        kind = "chat.completion.chunk" if is_chat else "text_completion"
        chunks.append(usage_chunk(**ids, object=kind, usage=usage))
    stream = b"".join(sse(chunk) for chunk in chunks) + SSE_DONE
    return httpx2.Response(200, content=stream, headers={"content-type": "text/event-stream"})


@pytest.fixture
def client() -> Any:
    http = httpx2.Client(transport=httpx2.MockTransport(fake_server))
    with openai.OpenAI(
        base_url="http://modelplane.test/v1", api_key="unused", max_retries=0, http_client=http
    ) as client:
        yield client


def test_the_openai_client_streams_a_chat_with_a_stop_and_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="tiny-gpt",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
            stop=["world"],
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello "
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.completion_tokens, chunks[-1].usage.total_tokens) == (3, 6)


def test_the_openai_client_streams_a_completion_to_its_length(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(model="tiny-gpt", prompt="Say", max_tokens=2, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == "Hello wor"
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, "length"]


def test_the_openai_client_reads_whole_answers_and_the_models(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="tiny-gpt", messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=9
    )
    assert answer.choices[0].message.content == "Hello world!"
    assert answer.choices[0].finish_reason == "length"
    done = client.completions.create(model="tiny-gpt", prompt=[1, 2], stop="!")
    assert (done.choices[0].text, done.choices[0].finish_reason) == ("Hello world", "stop")
    assert [m.id for m in client.models.list()] == ["tiny-gpt"]


def test_the_openai_client_raises_our_errors_with_the_field_named(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny-gpt", messages=[{"role": "user", "content": "Hi"}], temperature=3
        )
    assert caught.value.status_code == 400
    assert caught.value.param == "temperature"
    assert caught.value.type == "invalid_request_error"
    assert "[0, 2]" in caught.value.message
