"""Language models: the init folder, the model (or adapter) to train, loss and metrics."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from modelplane_runtime.contract import (
    ENV_STORAGE_CACHE,
    AdapterConfig,
    DataConfig,
    OptimConfig,
)
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.lm.data import LmData, encode_chat, parse_record, prepare_lm
from modelplane_runtime.lm.loss import evaluate_lm, lm_loss_sum, trim
from modelplane_runtime.lm.models import build_lm, linear_names, resolve_base
from tests.runtime.conftest import BUILTIN_CHAT_LLAMA as TINY
from tests.runtime.conftest import make_chat_lm_config as make_lm_config


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> LmData:
    store = tmp_path_factory.mktemp("tokenizer")
    return prepare_lm(make_lm_config(store), base_dir=None, tokenizer_store=store)


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory: pytest.TempPathFactory, chat: LmData) -> Path:
    """A tiny llama saved as a plain Hugging Face folder (an init to fine-tune)."""
    folder = tmp_path_factory.mktemp("llama")
    model: Any = build_lm(make_lm_config(folder), None, chat.tokenizer)
    model.save_pretrained(folder)
    chat.tokenizer.save_pretrained(folder)
    return folder


def test_a_llama_is_sized_by_params_and_seeded(tmp_path: Path, chat: LmData) -> None:
    model: Any = build_lm(make_lm_config(tmp_path), None, chat.tokenizer)
    assert model.config.num_hidden_layers == 2
    assert model.config.hidden_size == 32
    assert model.config.vocab_size == len(chat.tokenizer)
    assert model.config.max_position_embeddings == 48
    assert model.config.eos_token_id == chat.tokenizer.eos_token_id
    assert next(model.parameters()).dtype == torch.float32
    same = build_lm(make_lm_config(tmp_path), None, chat.tokenizer)
    other = build_lm(make_lm_config(tmp_path, optim=OptimConfig(seed=8)), None, chat.tokenizer)
    weights = model.state_dict()
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in weights.items())
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in weights.items())


def test_the_loss_sum_is_the_models_own_loss_over_supervised_tokens(
    tmp_path: Path, chat: LmData
) -> None:
    model = build_lm(make_lm_config(tmp_path), None, chat.tokenizer)
    input_ids, labels, mask = trim([t[:8] for t in chat.train.tensors])
    with torch.no_grad():
        nll, tokens, logits, targets = lm_loss_sum(model, input_ids, labels, mask)
        own = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    assert logits.shape[:2] == targets.shape == (8, input_ids.shape[1] - 1)
    assert int(tokens) == int((labels[:, 1:] != -100).sum()) > 0
    assert float(nll / tokens) == pytest.approx(float(own), rel=1e-5)


def test_fine_tuning_on_the_chat_set_lowers_validation_perplexity(
    tmp_path: Path, chat: LmData
) -> None:
    model = build_lm(make_lm_config(tmp_path), None, chat.tokenizer)
    before = evaluate_lm(model, chat.validation, batch_size=80, device="cpu")
    assert before["perplexity"] == pytest.approx(math.exp(before["loss"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(25):
        rows = torch.randint(0, len(chat.train), (32,), generator=generator)
        nll, tokens, _, _ = lm_loss_sum(model, *trim([t[rows] for t in chat.train.tensors]))
        loss: Any = nll / tokens
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = evaluate_lm(model, chat.validation, batch_size=16, device="cpu")
    assert model.training, "evaluation puts the model back in training mode"
    assert after["perplexity"] < before["perplexity"] / 20
    assert after["tokenAccuracy"] > before["tokenAccuracy"] + 0.3


def test_evaluation_does_not_depend_on_the_batch_size(tmp_path: Path, chat: LmData) -> None:
    model = build_lm(make_lm_config(tmp_path), None, chat.tokenizer).eval()
    whole = evaluate_lm(model, chat.validation, batch_size=80, device="cpu")
    pieces = evaluate_lm(model, chat.validation, batch_size=7, device="cpu")
    assert pieces == pytest.approx(whole, rel=1e-5)


def test_a_lora_adapter_trains_only_its_own_weights_and_starts_as_the_base(
    tmp_path: Path, chat: LmData, saved_llama: Path
) -> None:
    config = make_lm_config(
        tmp_path, init_uri=f"file://{saved_llama}", adapter=AdapterConfig(rank=4)
    )
    base_dir = resolve_base(config)
    assert base_dir == saved_llama
    model = build_lm(config, base_dir, chat.tokenizer)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in n for n in trainable)
    assert any("gate_proj" in n for n in trainable), "all-linear covers the MLP too"
    assert not any("lm_head" in n for n in trainable)
    base = build_lm(make_lm_config(tmp_path), None, chat.tokenizer)
    input_ids = chat.validation.tensors[0][:2]
    assert torch.equal(model(input_ids=input_ids).logits, base(input_ids=input_ids).logits)


def test_adapter_targets_are_checked_against_the_models_layers(
    tmp_path: Path, chat: LmData, saved_llama: Path
) -> None:
    config = make_lm_config(
        tmp_path,
        init_uri=f"file://{saved_llama}",
        adapter=AdapterConfig(target_modules=("q_proj", "query")),
    )
    with pytest.raises(ConfigError) as caught:
        build_lm(config, saved_llama, chat.tokenizer)
    message = str(caught.value)
    assert message.startswith("model.adapter.targetModules: query not in this model")
    base = build_lm(make_lm_config(tmp_path), None, chat.tokenizer)
    assert linear_names(base) == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"
    ]  # fmt: skip
    assert "q_proj, up_proj, v_proj" in message


def test_an_adapter_without_a_model_to_adapt_is_refused(tmp_path: Path, chat: LmData) -> None:
    config = make_lm_config(tmp_path, adapter=AdapterConfig())
    with pytest.raises(ConfigError, match=r"^model.adapter: .*set model.init.uri"):
        build_lm(config, None, chat.tokenizer)


def test_a_llama_init_of_another_shape_is_refused(
    tmp_path: Path, chat: LmData, saved_llama: Path
) -> None:
    config = make_lm_config(
        tmp_path, params={**TINY, "hidden": 64}, init_uri=f"file://{saved_llama}"
    )
    with pytest.raises(ConfigError, match=r"does not fit params: hidden=64 \(the init has 32\)"):
        build_lm(config, saved_llama, chat.tokenizer)


def _folder_without_weights(tmp_path: Path, saved_llama: Path) -> Path:
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text((saved_llama / "config.json").read_text())
    return folder


def _folder_with_a_bad_config(tmp_path: Path, saved_llama: Path) -> Path:
    folder = tmp_path / "bad-config"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hello": "world"}))
    return folder


def _empty_folder(tmp_path: Path, saved_llama: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _missing(tmp_path: Path, saved_llama: Path) -> Path:
    return tmp_path / "nowhere"


def _a_file(tmp_path: Path, saved_llama: Path) -> Path:
    return saved_llama / "model.safetensors"


@pytest.mark.parametrize(
    ("make_folder", "complaint"),
    [
        (_empty_folder, "is not a Hugging Face model folder (no config.json)"),
        (_folder_without_weights, "has no safetensors weights"),
        (_folder_with_a_bad_config, "config.json is not a model config"),
        (_missing, "not found"),
        (_a_file, "is a file; a model is a Hugging Face folder"),
    ],
    ids=[
        "an empty folder is not a model",
        "a config without weights is not a model",
        "a config.json without a model type is not a model",
        "a missing folder is reported as missing",
        "a weights file alone is not a model",
    ],
)
def test_an_init_that_is_not_a_model_is_refused(
    tmp_path: Path, saved_llama: Path, make_folder: Any, complaint: str
) -> None:
    folder = make_folder(tmp_path, saved_llama)
    config = make_lm_config(tmp_path, architecture="huggingface", init_uri=f"file://{folder}")
    with pytest.raises(ConfigError) as caught:
        resolve_base(config)
    assert str(caught.value).startswith(f"model.init.uri: file://{folder}")
    assert complaint in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"architecture": "huggingface"}, "architecture huggingface needs a model"),
        ({"init_uri": "builtin://gpt-17"}, "unknown built-in model builtin://gpt-17"),
    ],
    ids=["huggingface without an init is refused", "an unknown built-in model is refused"],
)
def test_init_uris_that_name_no_model_are_refused(
    tmp_path: Path, overrides: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^model.init.uri: .*{complaint}"):
        resolve_base(make_lm_config(tmp_path, **overrides))


def test_training_from_scratch_has_no_base(tmp_path: Path) -> None:
    assert resolve_base(make_lm_config(tmp_path)) is None


@pytest.fixture(scope="module")
def smollm2_cache(shared_storage_cache: Path) -> Iterator[Path]:
    """The storage cache SmolLM2 is converted into, once per session (~30 s)."""
    cache = shared_storage_cache
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_STORAGE_CACHE, str(cache))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield cache


# Loads a 135M-parameter model (and converts it when it runs first): under a minute alone,
# longer while CI builds images beside the tests.
@pytest.mark.timeout(900)
def test_smollm2_is_converted_once_and_its_chat_template_masks_all_but_the_answers(
    tmp_path: Path, smollm2_cache: Path
) -> None:
    config = make_lm_config(
        tmp_path,
        architecture="huggingface",
        params={},
        init_uri="builtin://smollm2-135m-instruct",
        data=DataConfig(train_uri="builtin://chat", validation_split=0.5),
    )
    folder = resolve_base(config)
    assert folder == smollm2_cache / "models" / "smollm2-135m-instruct"
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert resolve_base(config) == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp, "the conversion is reused"
    assert not [p for p in folder.parent.iterdir() if p.is_dir() and p.name.startswith(".")]

    data = prepare_lm(config, base_dir=folder, tokenizer_store=tmp_path)
    tokenizer = data.tokenizer
    assert data.train.tensors[0].shape[1] <= 512
    record = parse_record(
        {
            "messages": [
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "And of Italy?"},
                {"role": "assistant", "content": "Rome."},
            ]
        },
        where="test",
        text_column="text",
    )
    ids, labels = encode_chat(record, tokenizer)
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(ids)
    learnt = tokenizer.decode([t for t in labels if t != -100])
    assert learnt == "Paris.<|im_end|>\nRome.<|im_end|>\n"

    model: Any = build_lm(config, folder, tokenizer).eval()
    prompt: Any = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        answer = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, prompt["input_ids"].shape[1] :])
    assert os.environ[ENV_STORAGE_CACHE] == str(smollm2_cache)
