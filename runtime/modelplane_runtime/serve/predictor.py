"""A trained artifact made ready to answer: loaded, optimised, checked, warmed up.

No Ray here: the Serve app wraps a `Predictor`, and tests and benchmarks call it directly,
so "what HTTP returns" can be compared with "what the model says".
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modelplane_runtime.artifacts import LoadedModel, load_artifact
from modelplane_runtime.contract import REQUIRE_METRICS_REFUSAL, ServeArgs, gate_failures
from modelplane_runtime.data.raw import RawData
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.serve.model_cache import model_dir

log = logging.getLogger("modelplane.serve")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# How far an optimised model's probabilities may move from the fp32 model's on the
# start-up check (largest absolute difference over the check inputs). bf16 keeps 8 bits
# of mantissa and int8 rounds weights to 1/127 of their range: both move probabilities
# by about 1e-2 on the built-in models; 0.05 still catches a broken conversion.
TOLERANCE = {"fp32": 1e-4, "bf16": 0.05, "fp16": 0.02, "int8": 0.05}
CHECK_INPUTS = 64


@dataclass(frozen=True)
class Prediction:
    """Answers for a batch of inputs, in order."""

    labels: list[str]
    probabilities: np.ndarray[Any, np.dtype[np.float32]]
    """[N, C] class probabilities, columns in `Predictor.labels` order."""


@dataclass(frozen=True)
class OptimizationCheck:
    """How the optimised model compared with the fp32 model at start-up."""

    max_abs_difference: float
    agreement: float
    """Share of check inputs where both models pick the same class."""
    tolerance: float


def pick_device(args: ServeArgs) -> torch.device:
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device cuda was asked for, but this replica sees no GPU")
        return torch.device("cuda")
    return torch.device("cpu")


def _quantize_int8(model: nn.Module) -> nn.Module:
    # torch.ao's dynamic quantisation is deprecated in favour of torchao, but torchao's
    # int8 path is ~3x slower than fp32 on x86 CPUs without torch.compile (measured:
    # 1.15 ms vs 0.35 ms for a 128-512-128 MLP at batch 256) while this one uses fbgemm
    # kernels and is faster than fp32. Revisit when torch removes it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated", category=UserWarning)
        quantized: nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {nn.Linear}, dtype=torch.qint8
        )
    if any(isinstance(m, nn.TransformerEncoderLayer) for m in model.modules()):
        # The encoder layer's fused inference path reads `linear1.weight` as a tensor; a
        # dynamically quantised Linear has a `weight()` method instead, and the fused path
        # fails on it. Off for this process (a replica serves one model): the layers then
        # run their plain path, which calls the quantised Linears.
        torch.backends.mha.set_fastpath_enabled(False)
    return quantized


class Predictor:
    """The model behind one replica."""

    def __init__(self, args: ServeArgs) -> None:
        self.args = args
        self.device = pick_device(args)
        if args.dtype == "fp16" and self.device.type != "cuda":
            raise ConfigError("optimization.dtype fp16 needs a GPU; use bf16 or fp32 on CPUs")
        if args.quantization == "int8" and self.device.type != "cpu":
            raise ConfigError("optimization.quantization int8 is for CPU serving")
        directory = model_dir(args.model_uri, expected_digest=args.expected_digest)
        self.loaded: LoadedModel = load_artifact(
            directory, expected_digest=args.expected_digest, device="cpu"
        )
        card = self.loaded.card
        failures = gate_failures(args.require_metrics, card.get("metrics") or {})
        if failures:
            # The same gate the operator applies to a training's metrics, here on the
            # card's: the marker lets the operator tell this refusal from a crash.
            raise ConfigError(
                f"{REQUIRE_METRICS_REFUSAL} " + "; ".join(str(failure) for failure in failures)
            )
        if card["task"] == "masked-lm":
            raise ConfigError(
                f"{args.model_uri} is a masked-LM pre-training artifact; serve a classifier "
                "fine-tuned from it (model.init.uri in a ModelTraining)"
            )
        self.digest: str = card["digest"]
        self.kind = self.loaded.preprocessing.kind
        self.labels = list(self.loaded.labels)
        self.input_shape = list(self.loaded.preprocessing.input_shape)
        self.reference: nn.Module = self.loaded.model
        self.model = self._optimise(copy.deepcopy(self.reference))
        self.check = self._check()
        self.warm_up()

    @property
    def card(self) -> dict[str, Any]:
        return self.loaded.card

    def _optimise(self, model: nn.Module) -> nn.Module:
        if self.args.quantization == "int8":
            model = _quantize_int8(model)
        model = model.to(self.device)
        if self.args.dtype != "fp32":
            model = model.to(DTYPES[self.args.dtype])
        if self.args.compile:
            # dynamic=True: batch sizes vary with load, and one graph must serve them all
            # rather than recompiling for each new size.
            model = torch.compile(model, dynamic=True)  # type: ignore[assignment]
        return model.eval()

    def _sample(self, count: int, seed: int = 0) -> RawData:
        """Inputs for the start-up check and warm-up: random, but shaped like real ones."""
        generator = np.random.default_rng(seed)
        if self.kind == "text":
            vocab = self.loaded.vocabulary() or ["a"]
            words = [str(w) for w in vocab if w.isalpha()] or vocab
            texts = tuple(
                " ".join(generator.choice(words, size=int(generator.integers(3, 20))))
                for _ in range(count)
            )
            return RawData(kind="text", texts=texts)
        mean = np.asarray(self.loaded.preprocessing.mean or [0.0], dtype=np.float32)
        std = np.asarray(self.loaded.preprocessing.std or [1.0], dtype=np.float32)
        shape = (count, *self.input_shape)
        array = generator.standard_normal(shape).astype(np.float32)
        if self.kind == "image":
            array = array * std[:, None, None] + mean[:, None, None]
        else:
            array = array * std + mean
        return RawData(kind=self.kind, array=array.astype(np.float32))

    def _check(self) -> OptimizationCheck:
        """Compare the optimised model with the fp32 one; refuse to serve a model that an
        optimisation changed beyond tolerance."""
        sample = self.loaded.encode(self._sample(CHECK_INPUTS, seed=1))
        with torch.no_grad():
            expected = torch.softmax(self.reference(sample).float(), dim=-1)
            actual = self._forward(sample).cpu()
        difference = float((expected - actual).abs().max())
        agreement = float((expected.argmax(-1) == actual.argmax(-1)).float().mean())
        key = "int8" if self.args.quantization == "int8" else self.args.dtype
        tolerance = TOLERANCE[key]
        if self.args.compile:
            tolerance = max(tolerance, TOLERANCE["fp32"] * 10)
        check = OptimizationCheck(
            max_abs_difference=difference, agreement=agreement, tolerance=tolerance
        )
        if difference > tolerance:
            raise ConfigError(
                f"optimization (dtype {self.args.dtype}, quantization "
                f"{self.args.quantization}, compile {self.args.compile}) moves probabilities "
                f"by up to {difference:.4f} from the fp32 model, more than {tolerance}; "
                "serve this model without it"
            )
        log.info(
            "optimised model within %.4f of fp32 (tolerance %s), same class on %.1f%%",
            difference,
            tolerance,
            100 * agreement,
        )
        return check

    @torch.no_grad()
    def _forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Encoded inputs [N, ...] -> probabilities [N, C] (float32)."""
        inputs = inputs.to(self.device)
        if inputs.is_floating_point():
            inputs = inputs.to(DTYPES[self.args.dtype])
        return torch.softmax(self.model(inputs).float(), dim=-1)

    def warm_up(self, sizes: tuple[int, ...] = (1, 8, 32)) -> float:
        """Run a few batch sizes once (allocators, kernels, compiled graphs); seconds taken."""
        start = time.perf_counter()
        for size in sizes:
            self.predict(self._sample(size, seed=size))
        return time.perf_counter() - start

    def encode(self, raw: RawData) -> torch.Tensor:
        """A batch's inputs, encoded together into one tensor for one forward pass (a
        huggingface text classifier's holds token ids and attention mask: see
        lm.classification)."""
        return self.loaded.encode(raw)

    def predict(self, raw: RawData) -> Prediction:
        """Raw inputs (as one request carries them) -> labels and probabilities."""
        probabilities = self._forward(self.encode(raw)).cpu().numpy().astype(np.float32)
        labels = [self.labels[i] for i in probabilities.argmax(axis=-1)]
        return Prediction(labels=labels, probabilities=probabilities)

    def healthy(self) -> None:
        """Raise when the model cannot answer (a replica's health check)."""
        probabilities = self.predict(self._sample(1, seed=2)).probabilities
        if not np.isfinite(probabilities).all():
            raise RuntimeError("the model answers with non-finite probabilities")
