"""Language-model data: records to token rows, with the loss only where the model writes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from modelplane_runtime.contract import BUILTIN_DATA_KINDS, DataConfig, OptimConfig, RunConfig
from modelplane_runtime.data.builtin import BUILTIN, chat_records
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.lm import tokenizer as lm_tokenizer
from modelplane_runtime.lm.data import encode_chat, parse_record, prepare_lm

END = "<|im_end|>\n"


def make_lm_config(tmp_path: Path, **overrides: Any) -> RunConfig:
    """A tiny from-scratch llama on builtin://chat; override any field."""
    fields: dict[str, Any] = {
        "name": "lm",
        "architecture": "llama",
        "task": "text-generation",
        "params": {"max_length": 48, "vocab_size": 600},
        "data": DataConfig(train_uri="builtin://chat"),
        "optim": OptimConfig(seed=7),
        "output_uri": f"file://{tmp_path}/out",
    }
    fields.update(overrides)
    return RunConfig(**fields)


def write_jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"file://{path}"


def test_builtin_chat_is_the_same_every_time_and_holds_varied_conversations() -> None:
    records = chat_records()
    assert records == chat_records()
    assert 300 <= len(records) <= 1000
    roles = [[m["role"] for m in r["messages"]] for r in records]
    assert all(r[-1] == "assistant" and set(r) <= {"system", "user", "assistant"} for r in roles)
    assert any(r[0] == "system" for r in roles)
    assert any(r.count("assistant") == 2 for r in roles)
    assert {n: kind for n, (kind, _) in BUILTIN.items()} == BUILTIN_DATA_KINDS


def test_chat_labels_are_the_assistant_turns_and_nothing_else(tmp_path: Path) -> None:
    data = prepare_lm(make_lm_config(tmp_path), base_dir=None, tokenizer_store=tmp_path)
    tokenizer = data.tokenizer
    for raw in chat_records()[:40]:
        record = parse_record(raw, where="test", text_column="text")
        ids, labels = encode_chat(record, tokenizer)
        learnt = tokenizer.decode([t for t in labels if t != -100])
        answers = "".join(m["content"] + END for m in raw["messages"] if m["role"] == "assistant")
        assert learnt == answers
        assert tokenizer.decode(ids) == tokenizer.apply_chat_template(
            raw["messages"], tokenize=False
        )
    input_ids, targets, mask = data.train.tensors
    assert input_ids.shape == targets.shape == mask.shape
    assert input_ids.shape[1] <= 48
    assert bool((targets[mask == 0] == -100).all())
    assert bool((input_ids[mask == 0] == tokenizer.pad_token_id).all())
    assert len(data.validation) == 80
    assert len(data.train) == 720


def test_the_tokenizer_is_trained_once_and_read_back_on_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_lm_config(tmp_path)
    first = prepare_lm(config, base_dir=None, tokenizer_store=tmp_path / "store")
    assert (tmp_path / "store" / lm_tokenizer.STORE_FOLDER / "tokenizer.json").is_file()

    def no_training(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("the stored tokenizer should have been used")

    monkeypatch.setattr(lm_tokenizer, "train_bpe", no_training)
    again = prepare_lm(config, base_dir=None, tokenizer_store=tmp_path / "store")
    assert again.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    assert torch.equal(again.train.tensors[0], first.train.tensors[0])


def test_other_ranks_use_the_tokenizer_rank_0_sends(tmp_path: Path) -> None:
    config = make_lm_config(tmp_path)
    sent: list[str] = []

    def rank_0(make: Callable[[], str]) -> str:
        sent.append(make())
        return sent[-1]

    main = prepare_lm(config, base_dir=None, tokenizer_store=tmp_path / "a", from_main=rank_0)
    other = prepare_lm(
        config, base_dir=None, tokenizer_store=tmp_path / "b", from_main=lambda _: sent[0]
    )
    assert not (tmp_path / "b" / lm_tokenizer.STORE_FOLDER).exists()
    assert torch.equal(main.train.tensors[0], other.train.tensors[0])


def test_texts_are_packed_into_full_rows_under_the_text_column(tmp_path: Path) -> None:
    texts = [f"story number {i} is about a {'red' if i % 2 else 'blue'} fox" for i in range(40)]
    uri = write_jsonl(tmp_path / "corpus.jsonl", [{"body": t} for t in texts])
    config = make_lm_config(
        tmp_path,
        params={"max_length": 16},
        data=DataConfig(train_uri=uri, text_column="body", validation_split=0.25),
    )
    data = prepare_lm(config, base_dir=None, tokenizer_store=tmp_path)
    input_ids, labels, mask = data.train.tensors
    assert input_ids.shape[1] == 16
    assert bool((mask[:-1] == 1).all()), "every row but the last is full"
    assert torch.equal(labels[mask == 1], input_ids[mask == 1])
    eos = data.tokenizer.eos_token_id
    assert int((input_ids[mask == 1] == eos).sum()) == 30  # 40 texts, 10 held out
    packed = str(data.tokenizer.decode(input_ids[mask == 1])).split(data.tokenizer.eos_token)
    assert packed[-1] == ""
    assert len(set(packed[:-1])) == 30
    assert set(packed[:-1]) <= set(texts)


def test_prompt_response_records_learn_the_response_and_its_end(tmp_path: Path) -> None:
    rows = [{"prompt": f"Q: {i} times two? A:", "response": f" {2 * i}"} for i in range(30)]
    uri = write_jsonl(tmp_path / "pairs.jsonl", rows)
    validation = write_jsonl(tmp_path / "val.jsonl", rows[:5])
    config = make_lm_config(tmp_path, data=DataConfig(train_uri=uri, validation_uri=validation))
    data = prepare_lm(config, base_dir=None, tokenizer_store=tmp_path)
    assert len(data.train) == 30
    assert len(data.validation) == 5
    input_ids, labels, _ = data.validation.tensors
    tokenizer = data.tokenizer
    for row, record in zip(range(5), rows[:5], strict=True):
        learnt = tokenizer.decode(labels[row][labels[row] != -100])
        assert learnt == record["response"] + tokenizer.eos_token
        prompt = str(tokenizer.decode(input_ids[row][labels[row] == -100]))
        assert prompt.startswith(record["prompt"])


BAD_RECORDS = [
    ({"title": "x"}, ["line 2", "has none of the fields", "'messages'", "'prompt'", "title"]),
    ({"messages": [{"role": "user", "content": "hi"}]}, ["line 2", "no assistant turn"]),
    ({"messages": [{"role": "bot", "content": "hi"}]}, ["line 2", "messages[0]", "role"]),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 3}]},
        ["line 2", "messages[1]", "a string"],
    ),
    ({"prompt": "hi"}, ["line 2", "'prompt' and 'response' must both be strings"]),
    ({"text": ["a", "b"]}, ["line 2", "'text' must be a string"]),
    ("just a string", ["line 2", "not a JSON object"]),
]


@pytest.mark.parametrize(
    ("row", "fragments"),
    BAD_RECORDS,
    ids=[
        "a record without any field a language model reads is refused",
        "a conversation without an assistant turn is refused",
        "an unknown role is refused",
        "non-string content is refused",
        "a prompt without a response is refused",
        "a text that is not a string is refused",
        "a line that is not an object is refused",
    ],
)
@pytest.mark.parametrize("field", ["data.train", "data.validation"])
def test_malformed_records_name_the_field_file_and_line(
    tmp_path: Path, row: Any, fragments: list[str], field: str
) -> None:
    good = {"text": "fine"}
    bad = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    ok = write_jsonl(tmp_path / "ok.jsonl", [good, good])
    train, validation = (bad, ok) if field == "data.train" else (ok, bad)
    config = make_lm_config(tmp_path, data=DataConfig(train_uri=train, validation_uri=validation))
    with pytest.raises(ConfigError) as caught:
        prepare_lm(config, base_dir=None, tokenizer_store=tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{field}: bad.jsonl")
    for fragment in fragments:
        assert fragment in message


def test_a_line_that_is_not_json_is_refused_with_its_number(tmp_path: Path) -> None:
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n')
    config = make_lm_config(tmp_path, data=DataConfig(train_uri=f"file://{tmp_path}/broken.jsonl"))
    with pytest.raises(ConfigError, match=r"data.train: broken.jsonl line 2 is not JSON"):
        prepare_lm(config, base_dir=None, tokenizer_store=tmp_path)


def test_a_classification_data_set_is_refused_for_text_generation(tmp_path: Path) -> None:
    config = make_lm_config(tmp_path, data=DataConfig(train_uri="builtin://sentiment"))
    with pytest.raises(ConfigError, match=r"data.train.uri: builtin://sentiment .*builtin://chat"):
        prepare_lm(config, base_dir=None, tokenizer_store=tmp_path)


def test_records_too_long_to_learn_anything_are_refused(tmp_path: Path) -> None:
    rows = [{"prompt": "word " * 50, "response": "yes"}] * 4
    config = make_lm_config(
        tmp_path,
        params={"max_length": 8},
        data=DataConfig(train_uri=write_jsonl(tmp_path / "long.jsonl", rows)),
    )
    with pytest.raises(ConfigError, match=r"data.train: no record .* within 8 tokens"):
        prepare_lm(config, base_dir=None, tokenizer_store=tmp_path)
