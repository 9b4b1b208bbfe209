"""A language model's artifact: a Hugging Face folder any `transformers` user can load."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from modelplane_runtime.artifacts import CARD, verify_artifact
from modelplane_runtime.contract import AdapterConfig, OptimConfig, RunConfig
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.lm.artifact import (
    ADAPTER_WEIGHTS,
    FULL_WEIGHTS,
    load_lm_artifact,
    save_lm_artifact,
)
from modelplane_runtime.lm.data import LmData, prepare_lm
from modelplane_runtime.lm.models import build_lm, resolve_base
from tests.runtime.conftest import make_chat_lm_config as make_lm_config
from tests.runtime.conftest import run_fresh_python

HISTORY = {"steps": [{"step": 1, "loss": 3.0}], "epochs": {"1": {"perplexity": 9.0}}}
METRICS = {"loss": 2.2, "perplexity": 9.0, "tokenAccuracy": 0.5}


def save(directory: Path, model: Any, data: LmData, config: RunConfig, **kw: Any) -> str:
    return save_lm_artifact(
        directory,
        model=model,
        state_dict=kw.get("state_dict"),
        tokenizer=data.tokenizer,
        config=config,
        metrics=METRICS,
        history=HISTORY,
        base_dir=kw.get("base_dir"),
    )


def logits_of(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model.eval()(input_ids=input_ids).logits
    return logits


def perturb_adapter(model: Any) -> None:
    """LoRA's B starts at zero (the adapter changes nothing): give it weights, as
    training would, so a reload that dropped the adapter would show."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A full artifact (the base), an adapter on it, and the adapter merged, each with
    the in-memory model's logits on a few validation rows."""
    root = tmp_path_factory.mktemp("lm-artifacts")
    config = make_lm_config(root)
    data = prepare_lm(config, base_dir=None, tokenizer_store=root)
    input_ids = data.validation.tensors[0][:3]
    full = build_lm(config, None, data.tokenizer)
    full_digest = save(root / "full", full, data, config)

    adapted_config = make_lm_config(
        root, init_uri=f"file://{root}/full", adapter=AdapterConfig(rank=4)
    )
    base_dir = resolve_base(adapted_config)
    adapted = build_lm(adapted_config, base_dir, data.tokenizer)
    perturb_adapter(adapted)
    save(root / "lora", adapted, data, adapted_config, base_dir=base_dir)
    merged_config = adapted_config.model_copy(update={"adapter": AdapterConfig(rank=4, merge=True)})
    save(root / "merged", adapted, data, merged_config, base_dir=base_dir)
    return {
        "root": root,
        "data": data,
        "config": config,
        "input_ids": input_ids,
        "full_digest": full_digest,
        "logits": {"full": logits_of(full, input_ids), "lora": logits_of(adapted, input_ids)},
        "adapted": adapted,
    }


def test_a_full_model_is_a_hugging_face_folder_with_the_card_last(world: dict[str, Any]) -> None:
    folder = world["root"] / "full"
    names = {p.name for p in folder.iterdir()}
    assert {FULL_WEIGHTS, "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert {"curves.png", CARD} <= names
    assert not {ADAPTER_WEIGHTS, "adapter_config.json"} & names
    card = verify_artifact(folder, expected_digest=world["full_digest"])
    assert card["weights"] == FULL_WEIGHTS
    assert card["digest"] == world["full_digest"]
    assert card["huggingface"]["class"] == "LlamaForCausalLM"
    assert card["params"]["hidden"] == 32
    assert card["metrics"] == METRICS
    assert card["run_config"]["architecture"] == "llama"
    assert card["history"] == HISTORY
    assert card["tokenizer"] == "tokenizer.json"
    assert "base" not in card
    assert max(p.stat().st_mtime_ns for p in folder.iterdir()) == (folder / CARD).stat().st_mtime_ns


def test_an_adapter_names_its_base_and_the_base_weights_digest(world: dict[str, Any]) -> None:
    folder = world["root"] / "lora"
    card = verify_artifact(folder)
    assert card["weights"] == ADAPTER_WEIGHTS
    assert not (folder / FULL_WEIGHTS).exists()
    assert card["base"] == {"uri": f"file://{world['root']}/full", "digest": world["full_digest"]}
    assert card["adapter"]["rank"] == 4
    assert card["adapter"]["merge"] is False
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(world["root"] / "full")
    merged = verify_artifact(world["root"] / "merged")
    assert merged["weights"] == FULL_WEIGHTS
    assert "base" not in merged
    assert merged["adapter"]["merge"] is True


def test_artifacts_reload_with_the_logits_they_were_saved_with(world: dict[str, Any]) -> None:
    input_ids, logits = world["input_ids"], world["logits"]
    full = load_lm_artifact(world["root"] / "full", expected_digest=world["full_digest"])
    assert torch.equal(logits_of(full.model, input_ids), logits["full"])
    lora = load_lm_artifact(world["root"] / "lora")
    assert torch.equal(logits_of(lora.model, input_ids), logits["lora"])
    assert not torch.equal(logits["lora"], logits["full"]), "the adapter changes the model"
    merged = load_lm_artifact(world["root"] / "merged")
    assert torch.allclose(logits_of(merged.model, input_ids), logits["lora"], atol=1e-4)
    assert merged.tokenizer.get_vocab() == world["data"].tokenizer.get_vocab()
    adapted = world["adapted"]
    assert any("lora_A" in name for name, _ in adapted.named_parameters()), (
        "saving a merged artifact leaves the trainer's model as it was"
    )
    assert torch.equal(logits_of(adapted, input_ids), logits["lora"])


FRESH_PROCESS = textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import PeftModel
    root, out = sys.argv[1], sys.argv[2]
    tokenizer = AutoTokenizer.from_pretrained(f"{root}/full")
    ids = torch.load(f"{out}/ids.pt")
    found = {}
    full = AutoModelForCausalLM.from_pretrained(f"{root}/full").eval()
    base = AutoModelForCausalLM.from_pretrained(f"{root}/full")
    models = {
        "full": full,
        "lora": PeftModel.from_pretrained(base, f"{root}/lora").eval(),
        "merged": AutoModelForCausalLM.from_pretrained(f"{root}/merged").eval(),
    }
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True)
    for name, model in models.items():
        with torch.no_grad():
            found[name] = model(input_ids=ids).logits
            new = model.generate(**prompt, max_new_tokens=4, do_sample=False, min_new_tokens=4)
        assert new.shape[1] == prompt["input_ids"].shape[1] + 4, new.shape
    torch.save(found, f"{out}/logits.pt")
    """
)


def test_a_fresh_process_loads_them_with_plain_transformers_and_peft(
    world: dict[str, Any], tmp_path: Path
) -> None:
    torch.save(world["input_ids"], tmp_path / "ids.pt")
    run_fresh_python(FRESH_PROCESS, str(world["root"]), str(tmp_path))
    found = torch.load(tmp_path / "logits.pt")
    assert torch.equal(found["full"], world["logits"]["full"])
    assert torch.equal(found["lora"], world["logits"]["lora"])
    assert torch.allclose(found["merged"], world["logits"]["lora"], atol=1e-4)


def test_a_gathered_state_dict_is_saved_as_the_model_it_belongs_to(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """The FSDP path: the trainer hands the full state dict of a sharded model."""
    trained = build_lm(world["config"], None, world["data"].tokenizer)
    state = {k: v + 0.01 for k, v in trained.state_dict().items()}
    trained.load_state_dict(state)
    save(tmp_path / "gathered", object(), world["data"], world["config"], state_dict=state)
    loaded = load_lm_artifact(tmp_path / "gathered")
    input_ids = world["input_ids"]
    assert torch.equal(logits_of(loaded.model, input_ids), logits_of(trained, input_ids))


def test_changed_weights_are_refused(world: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    save(folder, build_lm(world["config"], None, world["data"].tokenizer), world["data"],
         world["config"])  # fmt: skip
    with (folder / FULL_WEIGHTS).open("r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\0\0\0\1")
    with pytest.raises(ConfigError, match="does not match"):
        load_lm_artifact(folder)


def test_an_adapter_whose_base_changed_is_refused(world: dict[str, Any], tmp_path: Path) -> None:
    data, root = world["data"], tmp_path
    base = build_lm(world["config"], None, data.tokenizer)
    save(root / "base", base, data, world["config"])
    config = make_lm_config(root, init_uri=f"file://{root}/base", adapter=AdapterConfig(rank=2))
    adapted = build_lm(config, root / "base", data.tokenizer)
    save(root / "adapter", adapted, data, config, base_dir=root / "base")
    other = build_lm(make_lm_config(root, optim=OptimConfig(seed=9)), None, data.tokenizer)
    save(root / "base", other, data, world["config"])
    with pytest.raises(ConfigError, match=r"adapter of file://.*/base .* now has sha256:"):
        load_lm_artifact(root / "adapter")


def test_an_unmerged_adapter_is_refused_as_an_init(world: dict[str, Any]) -> None:
    config = make_lm_config(world["root"], init_uri=f"file://{world['root']}/lora")
    with pytest.raises(ConfigError, match=r"^model.init.uri: .* is an unmerged LoRA adapter"):
        resolve_base(config)


def test_a_merged_artifact_is_an_init_like_any_model(world: dict[str, Any]) -> None:
    config = make_lm_config(world["root"], init_uri=f"file://{world['root']}/merged")
    assert resolve_base(config) == world["root"] / "merged"
