"""Data sources, preprocessing, sampling and checkpoints, without training."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from modelplane_runtime.data.builtin import sentiment
from modelplane_runtime.data.prepare import split
from modelplane_runtime.data.preprocessing import (
    fit_preprocessing,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from modelplane_runtime.data.readers import read_source
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.storage import local_path
from modelplane_runtime.train.checkpoint import checkpoint_paths, load_latest, save_checkpoint
from modelplane_runtime.train.progress import ProgressReporter
from modelplane_runtime.train.sampler import GlobalBatchSampler

COLUMNS: dict[str, Any] = {"text_column": "text", "label_column": "label"}


def test_the_built_in_text_set_is_the_same_every_time_and_balanced() -> None:
    first, second = sentiment(), sentiment()
    assert first == second
    assert len(first) == 2000
    assert first.labels is not None
    share = first.labels.count("positive") / len(first)
    assert 0.4 < share < 0.6


def test_a_split_depends_only_on_the_seed() -> None:
    raw = sentiment(count=100)
    a_train, a_val = split(raw, 0.2, seed=1)
    b_train, b_val = split(raw, 0.2, seed=1)
    _, c_val = split(raw, 0.2, seed=2)
    assert a_val == b_val
    assert a_train == b_train
    assert a_val != c_val
    assert (len(a_train), len(a_val)) == (80, 20)


def test_pvc_uris_map_under_the_pvc_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path))
    assert local_path("pvc://models/a/b", field="f") == tmp_path / "models" / "a" / "b"
    assert local_path("file:///data/x.csv", field="f") == Path("/data/x.csv")
    with pytest.raises(ConfigError, match="not a supported URI"):
        local_path("gs://bucket/x", field="f")


def test_csv_and_jsonl_text_read_the_same(tmp_path: Path) -> None:
    rows = [{"text": "good film", "label": "pos"}, {"text": "bad, film", "label": "neg"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.csv").write_text('text,label\ngood film,pos\n"bad, film",neg\n')
    a = read_source(f"file://{tmp_path}/d.jsonl", kind="text", field="f", **COLUMNS)
    b = read_source(f"file://{tmp_path}/d.csv", kind="text", field="f", **COLUMNS)
    assert a == b
    assert a.texts == ("good film", "bad, film")


def test_an_image_folder_reads_classes_from_sub_folders(tmp_path: Path) -> None:
    for label, value in (("cat", 10), ("dog", 200)):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.fromarray(np.full((4, 4), value, dtype=np.uint8)).save(
                tmp_path / label / f"{i}.png"
            )
    raw = read_source(f"file://{tmp_path}", kind="image", field="f", **COLUMNS)
    assert raw.array is not None
    assert raw.array.shape == (4, 1, 4, 4)
    assert raw.labels == ("cat", "cat", "dog", "dog")
    assert raw.array[2].max() == pytest.approx(200 / 255)


def test_image_normalisation_is_fitted_on_training_data() -> None:
    from modelplane_runtime.data.raw import RawData  # noqa: PLC0415

    array = np.stack([np.full((1, 2, 2), v, dtype=np.float32) for v in (0.0, 1.0)])
    raw = RawData(kind="image", array=array, labels=("a", "b"))
    prep = fit_preprocessing(raw, max_length=0)
    encoded = prep.encode_inputs(raw)
    assert prep.input_shape == [1, 2, 2]
    assert float(encoded.mean()) == pytest.approx(0.0, abs=1e-6)
    assert prep.labels == ["a", "b"]


def test_a_saved_tokenizer_encodes_like_the_trained_one(tmp_path: Path) -> None:
    texts = sentiment(count=200).texts
    tokenizer = train_tokenizer(texts, vocab_size=300, max_length=16)
    save_tokenizer(tokenizer, tmp_path)
    again = load_tokenizer(tmp_path, max_length=16)
    assert tokenizer.encode(texts[0]).ids == again.encode(texts[0]).ids
    assert len(again.encode(texts[0]).ids) == 16
    assert again.encode(texts[0]).tokens[0] == "[CLS]"


def test_global_batches_are_the_same_for_any_number_of_processes() -> None:
    one = GlobalBatchSampler(100, global_batch=8, rank=0, world_size=1, seed=5)
    halves = [
        GlobalBatchSampler(100, global_batch=8, rank=r, world_size=2, seed=5) for r in range(2)
    ]
    for whole, first, second in zip(
        one.batches(3), halves[0].batches(3), halves[1].batches(3), strict=True
    ):
        assert torch.equal(whole, torch.cat([first, second]))
    assert len(one) == 12  # the incomplete last batch is dropped
    resumed = list(one.batches(3, start=5))
    assert all(torch.equal(a, b) for a, b in zip(resumed, list(one.batches(3))[5:], strict=True))


def test_checkpoints_keep_the_newest_and_skip_unreadable_ones(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step=step, state={"step": torch.tensor(step)}, keep=2)
    assert [p.name for p in checkpoint_paths(tmp_path)] == [
        "step-000000030.pt",
        "step-000000020.pt",
    ]
    (tmp_path / "step-000000040.pt").write_bytes(b"torn write")
    (tmp_path / ".step-000000050.pt.tmp").write_bytes(b"in progress")
    found = load_latest(tmp_path)
    assert found is not None
    assert int(found[1]["step"]) == 30


def test_progress_is_served_as_json_and_prometheus() -> None:
    reporter = ProgressReporter(port=0)
    assert reporter.port == 0  # port 0 serves nothing
    from modelplane_harness.cluster import free_port  # noqa: PLC0415

    reporter = ProgressReporter(port=free_port(), host="127.0.0.1")
    try:
        reporter.update(
            phase="training", epoch=1, step=25, total_steps=100, loss=0.5, samples_per_second=1000.0
        )
        base = f"http://127.0.0.1:{reporter.port}"
        with urllib.request.urlopen(f"{base}/progress", timeout=5) as response:
            progress = json.loads(response.read())
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            metrics = response.read().decode()
    finally:
        reporter.close()
    assert progress["percent"] == 25
    assert progress["metrics_step"] is None
    assert progress["eta_seconds"] is not None
    assert "modelplane_training_step 25.0" in metrics
    assert "modelplane_training_loss 0.5" in metrics


def text_config(root: Path) -> Any:
    from modelplane_runtime.contract import DataConfig  # noqa: PLC0415
    from tests.runtime.conftest import make_config  # noqa: PLC0415

    return make_config(
        root,
        architecture="transformer",
        task="text-classification",
        params={"layers": 1, "hidden": 32, "heads": 2, "max_length": 16, "vocab_size": 300},
        data=DataConfig(train_uri="builtin://sentiment", validation_split=0.2),
    )


def test_a_run_trains_its_tokenizer_once_and_reads_it_back_after_a_restart(
    tmp_path: Path,
) -> None:
    from modelplane_runtime.data.prepare import prepare  # noqa: PLC0415
    from modelplane_runtime.data.preprocessing import TOKENIZER_FILE, train_tokenizer  # noqa: PLC0415

    config = text_config(tmp_path)
    store = tmp_path / "checkpoints"
    first = prepare(config, tokenizer_store=store)
    assert first.tokenizer is not None
    assert json.loads((store / TOKENIZER_FILE).read_text())["model"]["vocab"] == (
        first.tokenizer.get_vocab()
    )
    # What the store holds wins over training again: WordPiece training is not
    # deterministic between processes, so a restarted run must not retrain.
    earlier = train_tokenizer(("an earlier attempt's words",), vocab_size=40, max_length=16)
    (store / TOKENIZER_FILE).write_text(earlier.to_str())
    again = prepare(config, tokenizer_store=store)
    assert again.tokenizer is not None
    assert again.tokenizer.get_vocab() == earlier.get_vocab()
    assert again.vocab_size == earlier.get_vocab_size()


def test_the_same_texts_give_the_same_tokenizer_in_every_process() -> None:
    # tokenizers' trainer alone numbers continuation tokens in hash order, which differs
    # between processes (huggingface/tokenizers#1794); each process here is a new draw.
    script = (
        "from modelplane_runtime.data.builtin import sentiment\n"
        "from modelplane_runtime.data.preprocessing import train_tokenizer\n"
        "texts = tuple(sentiment().texts)\n"
        "print(train_tokenizer(texts, vocab_size=1000, max_length=32).to_str())\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(6)
    }
    assert len(outputs) == 1
    (only,) = outputs
    assert json.loads(only)["model"]["vocab"]["[MASK]"] == 4
