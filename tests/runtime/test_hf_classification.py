"""A Hugging Face folder (a tiny BERT made here) fine-tuned as a text classifier: architecture
huggingface, task text-classification. It learns builtin://sentiment through the
classifiers' path of the trainer (same labels, loss and metrics), one process and two under
DDP reach the same weights, a LoRA adapter trains the head whole, and the artifact is a
Hugging Face folder that plain transformers reloads in a fresh process with the logits the
trainer's model gives. Folders transformers cannot build as a sequence classifier are
refused naming model.init.uri."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    CodeGenConfig,
    CodeGenForCausalLM,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from modelplane_runtime.artifacts import CARD, load_artifact, sha256_file
from modelplane_runtime.contract import AdapterConfig, DataConfig, OptimConfig, RunConfig
from modelplane_runtime.data.builtin import sentiment
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.lm.classification import SequenceClassifier
from modelplane_runtime.train.distributed import DistEnv
from modelplane_runtime.train.loop import Trainer
from tests.runtime.conftest import (
    make_config,
    run_fresh_python,
    run_processes,
    tiny_llama_config,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LABELS = ["negative", "positive"]  # sorted, as the classifiers' Preprocessing sorts them
# 1 process against 2 Gloo processes with the same global batch: the ranks' gradients
# are averaged by DDP where one process averages in one go, and AdamW divides by
# sqrt(v), so the last bits differ and 6 steps carry them. Measured: 1.2e-7 (and the
# weights moved 7e-3 from the init).
TOLERANCE = 1e-5


def make_tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer trained on the built-in
    reviews, saved as a Hugging Face folder, as a masked-LM checkpoint (no pooler, no
    classification head: like a pre-trained BERT). No dropout, so runs are comparable."""
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=SPECIALS, show_progress=False
    )
    wordpiece.train_from_iterator(sentiment(count=2000).texts, trainer=trainer)
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[(t, wordpiece.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
    )
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=wordpiece,
        **{f"{kind}_token": f"[{kind.upper()}]" for kind in ("pad", "unk", "cls", "sep", "mask")},
    )
    bert = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    BertForMaskedLM(bert).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def hf_config(root: Path, bert: Path, *, name: str = "bert", **overrides: Any) -> RunConfig:
    """The tiny BERT fine-tuned on builtin://sentiment (1800 training reviews, 200
    held out): one epoch of batch 16 (112 steps, about a second)."""
    fields: dict[str, Any] = {
        "architecture": "huggingface",
        "task": "text-classification",
        "params": {},
        "init_uri": f"file://{bert}",
        "data": DataConfig(train_uri="builtin://sentiment"),
        "optim": OptimConfig(epochs=1, batch_size=16, learning_rate=2e-3, seed=3),
    }
    fields.update(overrides)
    return make_config(root, name=name, **fields)


def _card(artifact: Path) -> dict[str, Any]:
    card: dict[str, Any] = json.loads((artifact / CARD).read_text())
    return card


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def trained(bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny BERT fine-tuned in this process: its artifact and the trainer's model."""
    root = tmp_path_factory.mktemp("trained")
    trainer = Trainer(hf_config(root, bert), env=DistEnv())
    result = trainer.fit()
    return {"artifact": root / "out" / "bert", "result": result, "trainer": trainer}


def test_a_bert_folder_learns_the_sentiment_of_reviews(trained: dict[str, Any]) -> None:
    metrics = trained["result"].metrics
    assert set(metrics) == {"accuracy", "f1", "precision", "recall", "loss"}
    assert metrics["accuracy"] > 0.75, metrics  # chance is 0.5; measured 0.885
    assert metrics["f1"] > 0.7, metrics
    history = _card(trained["artifact"])["history"]["epochs"]
    assert list(history) == ["1"]  # no base-model evaluation: that is for language models


def test_the_artifact_is_a_hugging_face_folder_with_the_labels_and_the_card_last(
    trained: dict[str, Any],
) -> None:
    artifact = trained["artifact"]
    card = _card(artifact)
    model_config = json.loads((artifact / "config.json").read_text())
    assert model_config["id2label"] == {"0": "negative", "1": "positive"}
    assert model_config["architectures"] == ["BertForSequenceClassification"]
    assert (artifact / "tokenizer.json").is_file()
    assert (artifact / "tokenizer_config.json").is_file()
    assert card["task"] == "text-classification"
    assert card["labels"] == LABELS
    assert card["max_length"] == 64  # the model's own limit (max_position_embeddings)
    assert card["metrics"] == trained["result"].metrics
    assert card["weights"] == "model.safetensors"
    assert card["digest"] == sha256_file(artifact / "model.safetensors")
    assert card["digest"] == trained["result"].digest
    assert card["huggingface"] == {
        "class": "BertForSequenceClassification",
        "auto_class": "AutoModelForSequenceClassification",
    }
    newest = max(p.stat().st_mtime_ns for p in artifact.iterdir() if p.name != "result.json")
    assert (artifact / CARD).stat().st_mtime_ns == newest


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    folder, out = sys.argv[1], sys.argv[2]
    texts = json.loads(sys.argv[3])
    kwargs = json.loads(sys.argv[4])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, **kwargs).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.save({"logits": logits, "id2label": model.config.id2label}, out)
    """
)
TEXTS = [
    "the acting was wonderful",
    "i would not call the plot good",
    "what a dull and boring film with awful music",
]


def fresh_process_logits(folder: Path, out: Path, **kwargs: Any) -> dict[str, Any]:
    """Plain transformers in a new process: AutoModelForSequenceClassification.from_pretrained."""
    run_fresh_python(FRESH_PROCESS, str(folder), str(out), json.dumps(TEXTS), json.dumps(kwargs))
    found: dict[str, Any] = torch.load(out)
    return found


def trainer_logits(trainer: Trainer) -> torch.Tensor:
    """The trainer's own model on TEXTS, through the classifiers' one-tensor interface."""
    from modelplane_runtime.lm.classification import pack  # noqa: PLC0415

    packed = pack(trainer.hf_tokenizer, TEXTS, max_length=64)
    trainer.model.eval()
    with torch.no_grad():
        logits: torch.Tensor = trainer.model(packed)
    return logits


def test_plain_transformers_reloads_it_in_a_fresh_process_with_identical_logits(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    found = fresh_process_logits(trained["artifact"], tmp_path / "logits.pt")
    assert found["id2label"] == {0: "negative", 1: "positive"}
    assert torch.equal(found["logits"], trainer_logits(trained["trainer"]))


def test_the_replicas_loader_gives_the_trainers_probabilities(trained: dict[str, Any]) -> None:
    from modelplane_runtime.data.raw import RawData  # noqa: PLC0415

    loaded = load_artifact(trained["artifact"], expected_digest=trained["result"].digest)
    assert loaded.labels == LABELS
    raw = RawData(kind="text", texts=tuple(TEXTS))
    expected = torch.softmax(trainer_logits(trained["trainer"]), dim=-1)
    assert torch.equal(loaded.probabilities(loaded.encode(raw)), expected)
    # padding to the longest of a batch never changes an example's answer
    alone = loaded.probabilities(loaded.encode(RawData(kind="text", texts=(TEXTS[0],))))
    torch.testing.assert_close(alone[0], expected[0], atol=1e-6, rtol=0)


def test_one_process_and_two_under_ddp_reach_the_same_weights(bert: Path, tmp_path: Path) -> None:
    weights = {}
    for world_size in (1, 2):
        folder = tmp_path / f"w{world_size}"
        config = hf_config(
            folder,
            bert,
            optim=OptimConfig(
                epochs=1,
                max_steps=6,
                batch_size=16,
                learning_rate=2e-3,
                seed=3,
                gradient_accumulation=2,
            ),
        )
        folder.mkdir()
        done = run_processes(config, folder, world_size=world_size, timeout=180)
        assert [p.returncode for p in done] == [0] * world_size, [p.stderr[-3000:] for p in done]
        weights[world_size] = load_file(str(folder / "out" / "bert" / "model.safetensors"))
    one, two = weights[1], weights[2]
    assert one.keys() == two.keys()
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst < TOLERANCE, worst
    start = load_file(str(bert / "model.safetensors"))
    embeddings = "bert.embeddings.word_embeddings.weight"
    moved = float((one[embeddings] - start[embeddings]).abs().max())
    assert moved > 100 * TOLERANCE, moved  # it trained


@pytest.fixture(scope="module")
def pretrained_bert(
    bert: Path, trained: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A masked-LM BERT folder whose encoder already knows the reviews (the fine-tuned
    one's, without its pooler and head): what a LoRA adapter adapts in practice. A LoRA
    adapter on a randomly initialised encoder learns nothing in one epoch."""
    folder = tmp_path_factory.mktemp("pretrained-bert")
    tuned = AutoModelForSequenceClassification.from_pretrained(trained["artifact"])
    mlm = BertForMaskedLM(BertConfig.from_pretrained(bert))
    mlm.bert.load_state_dict(tuned.bert.state_dict(), strict=False)  # the MLM has no pooler
    mlm.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_text((bert / name).read_text())
    return folder


@pytest.mark.parametrize("merge", [False, True], ids=["adapter", "adapter merged"])
def test_a_lora_adapter_trains_the_head_whole_and_reloads(
    pretrained_bert: Path, tmp_path: Path, merge: bool
) -> None:
    bert = pretrained_bert
    config = hf_config(
        tmp_path,
        bert,
        adapter=AdapterConfig(rank=4, alpha=8, dropout=0.0, merge=merge),
        optim=OptimConfig(epochs=1, batch_size=16, learning_rate=2e-3, seed=3),
    )
    trainer = Trainer(config, env=DistEnv())
    inner: Any = trainer.model.model  # the PeftModel
    trainable = {n for n, p in inner.named_parameters() if p.requires_grad}
    # the head, and the pooler the masked-LM folder has no weights for, are trained whole
    whole = {n.split(".modules_to_save")[0] for n in trainable if "modules_to_save" in n}
    assert whole == {"base_model.model.classifier", "base_model.model.bert.pooler.dense"}
    assert all("lora_" in n or "modules_to_save" in n for n in trainable), trainable
    base_before = {n: p.detach().clone() for n, p in inner.named_parameters() if "query.base" in n}
    result = trainer.fit()
    assert result.metrics["accuracy"] > 0.75, result.metrics  # measured 0.885
    for name, before in base_before.items():
        assert torch.equal(dict(inner.named_parameters())[name], before)  # frozen
    artifact = tmp_path / "out" / "bert"
    card = _card(artifact)
    assert card["labels"] == LABELS
    assert card["adapter"]["merge"] is merge
    expected = trainer_logits(trainer)
    if merge:
        assert card["weights"] == "model.safetensors"
        plain = AutoModelForSequenceClassification.from_pretrained(artifact).eval()
        batch = trainer.hf_tokenizer(TEXTS, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        torch.testing.assert_close(logits.logits, expected, atol=1e-5, rtol=0)
    else:
        assert card["weights"] == "adapter_model.safetensors"
        assert card["base"]["uri"] == f"file://{bert}"
        assert not (artifact / "model.safetensors").exists()
        # transformers loads an adapter folder onto its base; the labels make the head
        labels = {
            "num_labels": 2,
            "id2label": dict(enumerate(LABELS)),
            "label2id": {k: i for i, k in enumerate(LABELS)},
        }
        found = fresh_process_logits(artifact, tmp_path / "logits.pt", **labels)
        assert torch.equal(found["logits"], expected)
    loaded = load_artifact(artifact)
    assert isinstance(loaded.model, SequenceClassifier)
    from modelplane_runtime.lm.classification import pack  # noqa: PLC0415

    with torch.no_grad():
        served = loaded.model(pack(trainer.hf_tokenizer, TEXTS, max_length=64))
    # merging adds B @ A into the weights: the same function up to float rounding
    torch.testing.assert_close(served, expected, atol=1e-5 if merge else 0, rtol=0)


def test_a_decoder_folder_classifies_too_reading_its_last_real_token(tmp_path: Path) -> None:
    """A Llama (no pad token in its config: the tokenizer's, EOS, is set on the head) is
    a sequence classifier as well; reloaded, a padded batch answers as the trainer's."""
    from modelplane_runtime.lm.tokenizer import train_bpe, wrap  # noqa: PLC0415

    folder = tmp_path / "llama"
    tokenizer = wrap(train_bpe(sentiment(count=300).texts, vocab_size=300))
    LlamaForCausalLM(tiny_llama_config(len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = hf_config(
        tmp_path, folder, optim=OptimConfig(epochs=1, max_steps=3, batch_size=16, seed=3)
    )
    trainer = Trainer(config, env=DistEnv())
    trainer.fit()
    artifact = tmp_path / "out" / "bert"
    saved = json.loads((artifact / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForSequenceClassification"]
    assert saved["pad_token_id"] == tokenizer.pad_token_id
    plain = AutoModelForSequenceClassification.from_pretrained(artifact).eval()
    batch = trainer.hf_tokenizer(TEXTS, padding=True, return_tensors="pt")  # lengths differ
    with torch.no_grad():
        logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.equal(logits.logits, trainer_logits(trainer))


def test_fsdp_is_refused_for_a_classifier_saying_why(bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"parallelism: fsdp is for text-generation.*use ddp"):
        Trainer(hf_config(tmp_path, bert, parallelism="fsdp"), env=DistEnv())


def _causal_lm(folder: Path, bert: Path) -> Path:
    """A tiny CodeGen (a causal LM transformers has no sequence classifier for)."""
    CodeGenForCausalLM(
        CodeGenConfig(vocab_size=300, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    ).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_text((bert / name).read_text())
    return folder


def _not_a_model(folder: Path, bert: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hello": "world"}))
    (folder / "model.safetensors").write_bytes(b"nothing")
    return folder


def _no_folder(folder: Path, bert: Path) -> Path:
    return folder


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_causal_lm, "is a codegen model, which transformers cannot build as a sequence"),
        (_not_a_model, "config.json is not a model config"),
        (_no_folder, "not found"),
    ],
    ids=["a causal LM", "a config that is no model", "nothing there"],
)
def test_a_folder_that_is_no_sequence_classifier_is_refused_naming_the_init(
    bert: Path, tmp_path: Path, make: Any, says: str
) -> None:
    folder = make(tmp_path / "init", bert)
    with pytest.raises(ConfigError, match=r"model\.init\.uri") as raised:
        Trainer(hf_config(tmp_path, bert, init_uri=f"file://{folder}"), env=DistEnv())
    assert says in str(raised.value)


def test_a_language_model_artifact_is_still_refused_by_the_replicas_loader(
    tmp_path: Path,
) -> None:
    """Only huggingface text-classification is served; text-generation is refused."""
    from modelplane_runtime.artifacts import CARD_FORMAT  # noqa: PLC0415

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    card = {
        "format": CARD_FORMAT,
        "architecture": "huggingface",
        "task": "text-generation",
        "weights": "model.safetensors",
        "digest": sha256_file(tmp_path / "model.safetensors"),
    }
    (tmp_path / CARD).write_text(json.dumps(card))
    with pytest.raises(ConfigError, match="text-generation model"):
        load_artifact(tmp_path)
