"""Language models on real Ray Serve through the OpenAI API (issue 20).

One local Serve instance holds two applications: the real pretrained SmolLM2-135M-Instruct
(`builtin://smollm2-135m-instruct`) at `/`, and a tiny llama trained here with a LoRA
adapter served by name at `/tiny`. Clients are the official `openai` package and `curl -N`;
the reference is transformers' own `generate` on the same weights.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from openai.types.chat import ChatCompletionMessageParam
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelplane_harness.cluster import free_port
from modelplane_harness.waiting import wait_for
from modelplane_runtime.contract import (
    SERVE_DEPLOYMENT,
    SERVE_IMPORT_PATH,
    AdapterConfig,
    AdapterRef,
    GenerationArgs,
    OptimConfig,
    ServeArgs,
)
from modelplane_runtime.lm.models import convert_builtin
from modelplane_runtime.train.distributed import DistEnv
from modelplane_runtime.train.loop import Trainer
from tests.runtime.conftest import make_chat_lm_config
from tests.serving.conftest import RunningServe, start_serve

SMOL = "smol"
TINY = "tiny"
QUESTION = "What is the capital of France?"


def _application(name: str, args: ServeArgs, route_prefix: str) -> dict[str, Any]:
    return {
        "name": name,
        "route_prefix": route_prefix,
        "import_path": SERVE_IMPORT_PATH,
        "logging_config": {"enable_access_log": False},
        "args": args.model_dump(mode="json"),
        "deployments": [
            {
                "name": SERVE_DEPLOYMENT,
                "max_ongoing_requests": 64,
                "max_queued_requests": 16,
                "ray_actor_options": {"num_cpus": 0.5},
            }
        ],
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny chat llama (with a chat template) and a LoRA adapter trained on it."""
    base_root = tmp_path_factory.mktemp("tiny-base")
    # A few steps are enough: the test compares the server with transformers on these
    # weights, whatever they learnt.
    base_config = make_chat_lm_config(base_root, optim=OptimConfig(seed=7, max_steps=8))
    Trainer(base_config, env=DistEnv()).fit()
    base = base_root / "out" / "lm"
    adapter_root = tmp_path_factory.mktemp("tiny-adapter")
    adapter_config = make_chat_lm_config(
        adapter_root,
        architecture="huggingface",
        init_uri=f"file://{base}",
        params={"max_length": 48},
        adapter=AdapterConfig(rank=4, alpha=32, dropout=0.0),
        # a large step: after 8 steps the tuned model answers otherwise than its base
        optim=OptimConfig(seed=3, learning_rate=0.3, max_steps=8),
    )
    Trainer(adapter_config, env=DistEnv()).fit()
    return base, adapter_root / "out" / "lm"


@pytest.fixture(scope="module")
def serving(
    tiny: tuple[Path, Path],
    storage_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningServe]:
    base, adapter = tiny
    smol = ServeArgs(
        model_name=SMOL,
        model_uri="builtin://smollm2-135m-instruct",
        threads=1,
        generation=GenerationArgs(max_sequences=4, max_waiting=2, max_tokens=200),
    )
    tiny_args = ServeArgs(
        model_name=TINY,
        model_uri=f"file://{base}",
        threads=1,
        generation=GenerationArgs(
            max_tokens=24, adapters=(AdapterRef(name="tuned", uri=f"file://{adapter}"),)
        ),
    )
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": free_port()},
        "applications": [
            _application(SMOL, smol, "/"),
            _application(TINY, tiny_args, "/tiny"),
        ],
    }
    running = start_serve(
        config,
        tmp_path_factory.mktemp("serve"),
        env={"MODELPLANE_STORAGE_CACHE": str(storage_cache)},
    )
    try:
        yield running
    finally:
        running.server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def reference(storage_cache: Path, monkeypatch_module: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """SmolLM2 as transformers loads it, from the folder the replica converted."""
    monkeypatch_module.setenv("MODELPLANE_STORAGE_CACHE", str(storage_cache))
    folder = convert_builtin("smollm2-135m-instruct", field="test")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def clients(serving: RunningServe) -> Iterator[dict[str, openai.OpenAI]]:
    """The official client for each application, closed at the end (an unclosed client's
    sockets would warn, and warnings are errors here)."""
    made = {
        name: openai.OpenAI(
            base_url=f"{serving.endpoint}{prefix}/v1", api_key="unused", max_retries=0
        )
        for name, prefix in ((SMOL, ""), (TINY, "/tiny"))
    }
    yield made
    for each in made.values():
        each.close()


@torch.no_grad()
def generate(model: Any, tokenizer: Any, ids: list[int], max_new_tokens: int) -> str:
    inputs = torch.tensor([ids])
    output = model.generate(
        inputs,
        attention_mask=torch.ones_like(inputs),
        do_sample=False,
        max_new_tokens=max_new_tokens,
    )
    text: str = tokenizer.decode(output[0][len(ids) :], skip_special_tokens=True)
    return text


def test_the_openai_client_gets_what_transformers_generate_gives(
    clients: dict[str, openai.OpenAI], reference: tuple[Any, Any]
) -> None:
    model, tokenizer = reference
    smol = clients[SMOL]
    assert [m.id for m in smol.models.list()] == [SMOL]
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
    chat = smol.chat.completions.create(
        model=SMOL,
        messages=messages,
        temperature=0,
        max_tokens=40,
        seed=1,
    )
    ids = list(
        tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )
    expected = generate(model, tokenizer, ids, 40)
    assert chat.choices[0].message.content == expected
    assert "Paris" in expected
    assert chat.usage is not None
    assert chat.usage.prompt_tokens == len(ids)
    streamed = smol.chat.completions.create(
        model=SMOL,
        messages=messages,
        temperature=0,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # token by token
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

    prompt = "The three primary colours are"
    completion = smol.completions.create(model=SMOL, prompt=prompt, max_tokens=16, temperature=0)
    expected = generate(model, tokenizer, tokenizer.encode(prompt), 16)
    assert completion.choices[0].text == expected
    assert completion.choices[0].finish_reason == "length"


def test_curl_streams_server_sent_events(
    serving: RunningServe, clients: dict[str, openai.OpenAI]
) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
    body = {
        "model": SMOL,
        "messages": messages,
        "temperature": 0,
        "max_tokens": 40,
        "stream": True,
    }
    done = subprocess.run(
        [
            "curl",
            "-sN",
            "--fail-with-body",
            f"{serving.endpoint}/v1/chat/completions",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    events = [line.removeprefix("data: ") for line in done.stdout.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    whole = clients[SMOL].chat.completions.create(
        model=SMOL,
        messages=messages,
        temperature=0,
        max_tokens=40,
    )
    assert text == whole.choices[0].message.content


MALFORMED: list[tuple[str, Any, str]] = [
    ("/v1/completions", b"{not json", "body"),
    ("/v1/completions", [1, 2], "body"),
    ("/v1/completions", {"prompt": "x"}, "model"),
    ("/v1/completions", {"model": SMOL}, "prompt"),
    ("/v1/completions", {"model": SMOL, "prompt": ["a", "b"]}, "prompt"),
    ("/v1/completions", {"model": SMOL, "prompt": [1, -2]}, "prompt"),
    ("/v1/completions", {"model": SMOL, "prompt": [10**9]}, "prompt"),
    ("/v1/completions", {"model": SMOL, "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"model": SMOL, "prompt": "x", "max_tokens": 10**6}, "max_tokens"),
    ("/v1/completions", {"model": SMOL, "prompt": "x", "temperature": 3}, "temperature"),
    ("/v1/completions", {"model": SMOL, "prompt": "x", "top_p": 0}, "top_p"),
    ("/v1/completions", {"model": SMOL, "prompt": "x", "n": 99}, "n"),
    ("/v1/completions", {"model": SMOL, "prompt": "x", "stop": ["a"] * 5}, "stop"),
    ("/v1/completions", {"model": SMOL, "prompt": "x", "logprobs": 3}, "logprobs"),
    ("/v1/chat/completions", {"model": SMOL}, "messages"),
    ("/v1/chat/completions", {"model": SMOL, "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": SMOL, "messages": [{"role": "robot"}]}, "role"),
    ("/v1/chat/completions", {"model": SMOL, "messages": [{"role": "user"}]}, "content"),
    (
        "/v1/chat/completions",
        {"model": SMOL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
        "stream",
    ),
    (
        "/v1/chat/completions",
        {"model": SMOL, "messages": [{"role": "user", "content": "x"}], "tools": [{}]},
        "tools",
    ),
]


def _post(url: str, payload: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=60)
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    connection.request("POST", parts.path, data, {"Content-Type": "application/json"})
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    return response.status, body, {k.lower(): v for k, v in response.getheaders()}


@pytest.mark.parametrize(("path", "payload", "param"), MALFORMED)
def test_a_malformed_request_gets_a_4xx_in_openais_error_shape(
    serving: RunningServe, path: str, payload: Any, param: str
) -> None:
    status, body, _ = _post(f"{serving.endpoint}{path}", payload)
    assert 400 <= status < 500, body
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert param in (body["error"]["param"] or "") or param in body["error"]["message"], body
    # and the replica keeps answering
    status, body, _ = _post(
        f"{serving.endpoint}/v1/completions",
        {"model": SMOL, "prompt": "Hi", "max_tokens": 1, "temperature": 0},
    )
    assert status == 200, body


def test_an_unknown_model_or_route_is_a_404_in_openais_shape(
    serving: RunningServe, clients: dict[str, openai.OpenAI]
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        clients[SMOL].completions.create(model="gpt-4", prompt="x", max_tokens=1)
    assert "'gpt-4' does not exist here" in str(caught.value)
    status, body, _ = _post(f"{serving.endpoint}/v1/embeddings", {"model": SMOL})
    assert status == 404
    assert body["error"]["code"] == "unknown_url"


def _gauge(serving: RunningServe, name: str) -> float:
    pattern = re.compile(rf'^ray_{name}\{{[^}}]*model="{SMOL}"[^}}]*\}} (\S+)$', re.MULTILINE)
    return sum(float(v) for v in pattern.findall(serving.metrics()))


def test_a_client_that_disconnects_mid_stream_frees_its_sequence(serving: RunningServe) -> None:
    parts = urllib.parse.urlsplit(serving.endpoint)
    connection = http.client.HTTPConnection(parts.netloc, timeout=60)
    body = {"model": SMOL, "prompt": "Once upon a time", "max_tokens": 200, "stream": True}
    connection.request(
        "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    assert response.status == 200
    for _ in range(3):
        assert response.readline().startswith(b"data: ")
        response.readline()
    wait_for(
        lambda: _gauge(serving, "modelplane_sequences_running") == 1,
        timeout=40,
        what="the running-sequences gauge to show the stream",
    )
    tokens_before = _gauge(serving, "modelplane_generated_tokens_total")
    connection.close()  # mid-stream: ~190 tokens (~15 s) were still to come
    closed = time.monotonic()
    wait_for(
        lambda: _gauge(serving, "modelplane_sequences_running") == 0,
        timeout=40,
        what="the sequence to be freed",
    )
    settled = _gauge(serving, "modelplane_generated_tokens_total")
    took = time.monotonic() - closed
    print(f"freed within {took:.1f} s; {settled - tokens_before:.0f} tokens after")
    assert settled - tokens_before < 150, "the sequence kept generating after the client left"


def test_a_full_replica_answers_429_with_retry_after_and_serving_continues(
    serving: RunningServe,
) -> None:
    # 4 sequences at once and 2 waiting: of 10 long requests at once, some are refused.
    body = {"model": SMOL, "prompt": "Count to a hundred:", "max_tokens": 60, "temperature": 0}
    with ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(lambda _: _post(f"{serving.endpoint}/v1/completions", body), range(10))
        )
    statuses = sorted(status for status, _, _ in answers)
    assert statuses.count(200) >= 6, statuses
    assert 429 in statuses, statuses
    refused = next((b, h) for s, b, h in answers if s == 429)
    assert refused[0]["error"]["type"] == "rate_limit_error"
    assert int(refused[1]["retry-after"]) >= 1
    wait_for(lambda: _gauge(serving, "modelplane_sequences_waiting") == 0, timeout=40, what="idle")
    status, _, _ = _post(f"{serving.endpoint}/v1/completions", {**body, "max_tokens": 2})
    assert status == 200


# peft 0.21 asks transformers 5 for a property that is deprecated there
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_an_adapter_is_served_by_name_on_its_base(
    clients: dict[str, openai.OpenAI], tiny: tuple[Path, Path]
) -> None:
    from peft import PeftModel  # noqa: PLC0415

    base_dir, adapter_dir = tiny
    tiny_client = clients[TINY]
    assert [m.id for m in tiny_client.models.list()] == [TINY, f"{TINY}:tuned"]
    tokenizer: Any = AutoTokenizer.from_pretrained(base_dir)
    base: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base.eval()
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir
    ).eval()
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is 3 plus 4?"}]
    ids = list(
        tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )
    answers = {}
    for name, model in ((TINY, base), (f"{TINY}:tuned", tuned), ("tuned", tuned)):
        answer = tiny_client.chat.completions.create(
            model=name,
            messages=messages,
            temperature=0,
            max_tokens=12,
        )
        answers[name] = answer.choices[0].message.content
        assert answers[name] == generate(model, tokenizer, ids, 12), name
    assert answers[TINY] != answers["tuned"]


def test_sampled_choices_and_a_stop_string(clients: dict[str, openai.OpenAI]) -> None:
    tiny_client = clients[TINY]
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a colour."}]
    sampled = tiny_client.chat.completions.create(
        model=TINY, messages=messages, temperature=0.9, top_p=0.9, n=3, max_tokens=12, seed=5
    )
    assert sorted(choice.index for choice in sampled.choices) == [0, 1, 2]
    assert all(choice.finish_reason in {"stop", "length"} for choice in sampled.choices)
    assert sampled.usage is not None
    assert 3 <= sampled.usage.completion_tokens <= 36
    smol = clients[SMOL]
    prompt = "The capital of France is"
    whole = smol.completions.create(model=SMOL, prompt=prompt, max_tokens=16, temperature=0)
    assert "." in whole.choices[0].text
    cut = smol.completions.create(
        model=SMOL, prompt=prompt, max_tokens=16, temperature=0, stop=["."]
    )
    assert cut.choices[0].text == whole.choices[0].text.split(".")[0]
    assert cut.choices[0].finish_reason == "stop"
