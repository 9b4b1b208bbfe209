"""The training loop: DDP or FSDP, mixed precision, accumulation, clipping, checkpoints,
resume.

Two kinds of model go through it: classifiers and masked-LM (models.registry,
data.prepare, artifacts.save_artifact; and a huggingface text classifier, a transformers
model behind the same interface: lm.classification, saved as a Hugging Face folder), and
causal language models built from transformers (architectures in
HUGGINGFACE_ARCHITECTURES, task text-generation: modelplane_runtime.lm), which may also be
sharded with FSDP (train.fsdp). A language model's loss is normalised by the
number of supervised tokens in the whole optimizer step, over every rank and
micro-batch, so any number of processes computes the gradient one process computes.

With an s3:// output the trainer works in a local staging folder under the storage cache
(one per rank) and the bucket is the truth: rank 0 uploads each checkpoint and, at the
end, publishes the artifact (artifacts.publish); a run resumes from the bucket's newest
checkpoint, so a replacement pod on another node continues where the last one stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

from modelplane_runtime import objectstore
from modelplane_runtime.artifacts import (
    CARD,
    RESULT,
    fetch_published,
    load_init_weights,
    publish,
    save_artifact,
    verify_artifact,
    write_result,
)
from modelplane_runtime.contract import (
    HUGGINGFACE_ARCHITECTURES,
    OBJECTIVE_EPOCHS,
    RunConfig,
    TrainingResult,
)
from modelplane_runtime.data.prepare import Prepared, prepare
from modelplane_runtime.data.preprocessing import TOKENIZER_FILE
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.evaluate import (
    check_lm_metrics,
    default_metrics,
    evaluate,
    evaluate_lm_sharded,
)
from modelplane_runtime.models.registry import DataShape, build_model, resolve_params
from modelplane_runtime.objectstore import S3Uri
from modelplane_runtime.storage import cache_key, cache_root, is_remote, local_path, materialize
from modelplane_runtime.train import fsdp
from modelplane_runtime.train.checkpoint import (
    load_latest,
    load_latest_remote,
    save_checkpoint,
    upload_checkpoint,
)
from modelplane_runtime.train.distributed import DistEnv
from modelplane_runtime.train.progress import ProgressReporter
from modelplane_runtime.train.sampler import GlobalBatchSampler
from modelplane_runtime.train.schedule import lr_multiplier
from modelplane_runtime.train.tasks import lm_batch, supervised_tokens, task_loss

if TYPE_CHECKING:
    from modelplane_runtime.lm.data import LmData

log = logging.getLogger("modelplane.train")
LOG_EVERY_STEPS = 50
BASE_EPOCH = "0"
"""The history key of a language model's evaluation before any training: the base
model's perplexity, so a fine-tune's gain shows. Never a tuning objective or a result."""


@dataclass
class Position:
    """Where training is: resumable from exactly here."""

    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0


@dataclass
class History:
    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "epochs": self.epochs}


def artifact_uri(config: RunConfig) -> str:
    return f"{config.output_uri.rstrip('/')}/{config.name}"


def artifact_dir(config: RunConfig, *, rank: int = 0) -> Path:
    """Where this rank writes the artifact and checkpoints: the output itself on a file
    system, a staging folder in the storage cache for object storage."""
    if is_remote(config.output_uri):
        return cache_root() / "staging" / cache_key(artifact_uri(config)) / f"rank-{rank}"
    return local_path(config.output_uri, field="output.uri") / config.name


def _optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    optim = config.optim
    if optim.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=optim.learning_rate,
            momentum=0.9,
            weight_decay=optim.weight_decay,
        )
    return torch.optim.AdamW(
        model.parameters(), lr=optim.learning_rate, weight_decay=optim.weight_decay
    )


class Trainer:
    """One training run on this process; construct, then `fit()`."""

    def __init__(
        self,
        config: RunConfig,
        *,
        env: DistEnv,
        reporter: ProgressReporter | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.env = env
        self.device = env.device()
        self.reporter = reporter or ProgressReporter(port=0)
        self.on_step = on_step
        self.output = artifact_dir(config, rank=env.rank)
        self.checkpoints = self.output / "checkpoints"
        self.hf_classifier = (
            config.architecture == "huggingface" and config.task == "text-classification"
        )
        # A causal language model; a huggingface classifier takes the classifiers' path
        # (their loss, metrics and DDP) and only its artifact is a Hugging Face folder.
        self.language = config.architecture in HUGGINGFACE_ARCHITECTURES and not self.hf_classifier
        self.sharded = config.parallelism == "fsdp" and env.distributed  # 1 process: plain
        if config.parallelism == "fsdp" and self.hf_classifier:
            raise ConfigError(
                "parallelism: fsdp is for text-generation; a huggingface text-classification "
                "model is evaluated as the other classifiers are, by rank 0 alone, and a "
                "sharded model's forward pass needs every rank. Sequence classifiers fit "
                "one GPU (BERT-large has 340M parameters): use ddp"
            )
        if config.parallelism == "fsdp" and not self.language:
            raise ConfigError(
                f"parallelism: fsdp shards the transformers-based models (architecture "
                f"{' or '.join(HUGGINGFACE_ARCHITECTURES)}), not {config.architecture}; "
                "use ddp"
            )
        self.remote: S3Uri | None = None
        if is_remote(config.output_uri):
            self.remote = objectstore.parse(artifact_uri(config), field="output.uri")
            self._stage_from_bucket(self.remote)
        precision = config.optim.precision
        if precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("hyperparameters.precision fp16 needs a GPU; use bf16 or fp32")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.metrics = config.metrics or default_metrics(config.task)

        self.model: nn.Module
        self.train_set: TensorDataset
        if self.language:
            self._build_language_model()
        else:
            self._build_classifier()
        if self.remote is not None and env.is_main:
            self._upload_tokenizer(self.remote)
        self.model.to(self.device)
        self.wrapped: nn.Module = self.model
        if self.sharded:
            if env.is_main:
                log.info(
                    "FSDP: %d layers and the root sharded over %d processes",
                    len(fsdp.layer_units(self.model)),
                    env.world_size,
                )
            fsdp.shard(self.model, precision=precision, device=self.device)
            self.autocast_dtype = None  # the sharding's policy casts the parameters
        elif env.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.model, device_ids=device_ids)
        self.optimizer = _optimizer(config, self.model)
        self.sampler = GlobalBatchSampler(
            len(self.train_set),
            global_batch=config.optim.batch_size,
            rank=env.rank,
            world_size=env.world_size,
            seed=config.optim.seed,
        )
        self._plan_steps()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lr_multiplier(
                schedule=config.optim.schedule,
                warmup_steps=config.optim.warmup_steps,
                total_steps=self.total_steps,
            ),
        )
        self.position = Position()
        self.history = History()
        self.resumed_from: int | None = None

    def _plan_steps(self) -> None:
        """Steps per epoch, in all, and the epochs that run: maxSteps may end the run
        inside an epoch, which is then the last and is evaluated where it stops."""
        optim = self.config.optim
        self.steps_per_epoch = len(self.sampler) // optim.gradient_accumulation
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"batchSize x gradientAccumulation ({optim.batch_size} x "
                f"{optim.gradient_accumulation}) is more than the {len(self.train_set)} "
                "training examples"
            )
        self.total_steps = self.steps_per_epoch * optim.epochs
        if optim.max_steps is not None:
            self.total_steps = min(self.total_steps, optim.max_steps)
        self.epochs_to_run = math.ceil(self.total_steps / self.steps_per_epoch)

    def _build_classifier(self) -> None:
        config = self.config
        if self.hf_classifier:
            self._build_hf_classifier()
            return
        init_dir = None
        if config.init_uri:
            init_dir = materialize(config.init_uri, field="model.init.uri", folder=True)
            verify_artifact(init_dir, source=config.init_uri, field="model.init.uri")
        torch.manual_seed(config.optim.seed)
        self.data: Prepared = prepare(
            config,
            init_dir=init_dir,
            tokenizer_store=self.checkpoints,
            from_main=self.env.from_main,
        )
        self.train_set = self.data.train
        self.params = resolve_params(config.architecture, config.params)
        self.shape = DataShape(
            num_classes=self.data.num_classes,
            input_shape=tuple(self.data.preprocessing.input_shape),
            vocab_size=self.data.vocab_size,
        )
        torch.manual_seed(config.optim.seed)  # identical initial weights on every rank
        self.model = build_model(config.architecture, config.task, self.params, self.shape)
        if init_dir is not None:
            load_init_weights(self.model, init_dir, source=config.init_uri)

    def _build_hf_classifier(self) -> None:
        """The init folder's model as a sequence classifier for the data's labels, behind
        the classifiers' one-tensor interface (lm.classification)."""
        from modelplane_runtime.lm.classification import (  # noqa: PLC0415 (transformers)
            build_classifier,
            prepare_classification,
        )
        from modelplane_runtime.lm.models import resolve_base  # noqa: PLC0415

        config = self.config
        self.base_dir = resolve_base(config)
        if self.base_dir is None:
            raise ConfigError("model.init.uri: architecture huggingface needs a model folder")
        text = prepare_classification(config, base_dir=self.base_dir)
        self.data = text.prepared
        self.hf_tokenizer = text.tokenizer
        self.train_set = self.data.train
        self.params = dict(config.params)
        self.shape = DataShape(
            num_classes=self.data.num_classes,
            input_shape=tuple(self.data.train.tensors[0].shape[1:]),
            vocab_size=len(text.tokenizer),
        )
        labels = self.data.preprocessing.labels
        self.model = build_classifier(config, self.base_dir, text.tokenizer, labels)  # seeded

    def _build_language_model(self) -> None:
        """A transformers model (or a LoRA adapter on one) and its token tensors; the
        from-scratch tokenizer is kept beside the checkpoints (`lm-tokenizer/`)."""
        # transformers and peft take seconds to import: only language-model runs pay it.
        from modelplane_runtime.lm.data import prepare_lm  # noqa: PLC0415
        from modelplane_runtime.lm.models import build_lm, resolve_base  # noqa: PLC0415

        config = self.config
        if config.task != "text-generation":
            tasks = "text-generation or text-classification"
            raise ConfigError(
                f"task: architecture {config.architecture} trains "
                f"{tasks if config.architecture == 'huggingface' else 'text-generation'}, "
                f"not {config.task}"
            )
        check_lm_metrics(self.metrics)
        self.base_dir = resolve_base(config)
        self.lm: LmData = prepare_lm(
            config,
            base_dir=self.base_dir,
            tokenizer_store=self.checkpoints,
            from_main=self.env.from_main,
        )
        self.train_set = self.lm.train
        self.model = build_lm(config, self.base_dir, self.lm.tokenizer)  # seeded: all ranks alike

    # -- object storage -------------------------------------------------------------------

    def _stage_from_bucket(self, remote: S3Uri) -> None:
        """Start from the bucket alone: a staging folder an earlier run left in local
        mode's cache must not resurrect checkpoints the bucket no longer has. The run's
        tokenizer (kept beside the checkpoints) comes back from the bucket."""
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if not self.env.is_main:
            return
        if self.language:
            folder = remote.child(f"checkpoints/{_lm_tokenizer_folder()}")
            if objectstore.list_objects(folder, field="output.uri"):
                objectstore.download_prefix(
                    folder, self.checkpoints / _lm_tokenizer_folder(), field="output.uri"
                )
            return
        tokenizer = remote.child(f"checkpoints/{TOKENIZER_FILE}")
        if objectstore.exists(tokenizer, field="output.uri"):
            objectstore.download_file(
                tokenizer, self.checkpoints / TOKENIZER_FILE, field="output.uri"
            )

    def _upload_tokenizer(self, remote: S3Uri) -> None:
        if self.language:
            name = _lm_tokenizer_folder()
            local_folder = self.checkpoints / name
            marker = remote.child(f"checkpoints/{name}/{TOKENIZER_FILE}")
            if local_folder.is_dir() and not objectstore.exists(marker, field="output.uri"):
                # tokenizer.json, the marker, goes last: a folder that has it is complete
                objectstore.upload_tree(
                    local_folder,
                    remote.child(f"checkpoints/{name}"),
                    field="output.uri",
                    last=(TOKENIZER_FILE,),
                )
            return
        local = self.checkpoints / TOKENIZER_FILE
        target = remote.child(f"checkpoints/{TOKENIZER_FILE}")
        if local.is_file() and not objectstore.exists(target, field="output.uri"):
            objectstore.upload_file(local, target, field="output.uri")

    # -- the loop --------------------------------------------------------------------

    def fit(self) -> TrainingResult:
        self._resume()
        if self.language and self.position.step == 0 and BASE_EPOCH not in self.history.epochs:
            self._evaluate(-1)  # the base model, under BASE_EPOCH
        self.reporter.update(
            phase="training",
            total_steps=self.total_steps,
            step=self.position.step,
            epoch=self.position.epoch + 1,
        )
        optim = self.config.optim
        samples_per_step = optim.batch_size * optim.gradient_accumulation
        throughput: float | None = None
        token_rate: float | None = None
        last_metrics: dict[str, float] = {}
        self.wrapped.train()
        for epoch in range(self.position.epoch, self.epochs_to_run):
            first = self.position.step_in_epoch if epoch == self.position.epoch else 0
            micro_batches = self.sampler.batches(epoch, start=first * optim.gradient_accumulation)
            for step_in_epoch in range(first, self.steps_per_epoch):
                if self.position.step >= self.total_steps:
                    break  # hyperparameters.maxSteps
                began = time.perf_counter()
                loss, tokens = self._step(micro_batches, epoch=epoch, step_in_epoch=step_in_epoch)
                seconds = max(time.perf_counter() - began, 1e-9)
                throughput = _smoothed(throughput, samples_per_step / seconds)
                if tokens is not None:
                    token_rate = _smoothed(token_rate, tokens / seconds)
                self.position = Position(epoch, step_in_epoch + 1, self.position.step + 1)
                self.history.steps.append({"step": self.position.step, "loss": loss})
                self.reporter.update(
                    epoch=epoch + 1,
                    step=self.position.step,
                    loss=loss,
                    samples_per_second=throughput,
                    tokens_per_second=token_rate,
                )
                if self.env.is_main and self.position.step % LOG_EVERY_STEPS == 0:
                    log.info(
                        "step %d/%d epoch %d loss %.4f %.0f samples/s",
                        self.position.step,
                        self.total_steps,
                        epoch + 1,
                        loss,
                        throughput,
                    )
                if self.position.step % self.config.checkpoint_every_steps == 0:
                    self._checkpoint()
                if self.on_step:
                    self.on_step(self.position.step)
            last_metrics = self._evaluate(epoch)
        return self._finish(last_metrics)

    def _step(
        self, micro_batches: Iterator[torch.Tensor], *, epoch: int, step_in_epoch: int
    ) -> tuple[float, int | None]:
        """One optimizer step over `gradientAccumulation` micro-batches: the mean loss,
        and for a language model the tokens all processes read (padding excluded)."""
        optim = self.config.optim
        tokens: int | None = None
        if self.language:
            mean, tokens = self._lm_gradients(micro_batches)
        else:
            mean = self._classifier_gradients(micro_batches, epoch=epoch, step=step_in_epoch)
        value = float(mean)
        if not math.isfinite(value):
            raise ConfigError(
                f"the training loss became {value} at step {self.position.step + 1} "
                f"(epoch {epoch + 1}): lower hyperparameters.learningRate, raise warmupSteps "
                "or train in fp32"
            )
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        # Under FSDP the gradients are DTensor shards: the norm is the global one.
        nn.utils.clip_grad_norm_(self.model.parameters(), optim.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value, tokens

    def _gradient_sync(self, *, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Reduce gradients over the ranks after the last micro-batch only."""
        if self.sharded:
            fsdp.set_gradient_sync(self.model, enabled=last)
            return contextlib.nullcontext()
        if last or not isinstance(self.wrapped, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.wrapped.no_sync()

    def _lm_gradients(self, micro_batches: Iterator[torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Backward over a language model's micro-batches: each token's loss weighs
        1 / (the supervised tokens of the whole step, every rank's). DDP and FSDP average
        the gradients over the W ranks, hence the factor W. Returns the step's mean token
        loss and the tokens read."""
        from modelplane_runtime.lm.loss import lm_loss_sum  # noqa: PLC0415

        accumulation = self.config.optim.gradient_accumulation
        tensors = self.lm.train.tensors
        batches = [lm_batch(tensors, next(micro_batches), self.device) for _ in range(accumulation)]
        counts = torch.tensor(
            [
                sum(supervised_tokens(labels) for _, labels, _ in batches),
                sum(int(mask.sum()) for _, _, mask in batches),
            ],
            dtype=torch.float64,
            device=self.device,
        )
        if self.env.distributed:
            dist.all_reduce(counts)
        supervised, read = max(1, int(counts[0])), int(counts[1])
        weight = self.env.world_size / supervised
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for micro, (input_ids, labels, mask) in enumerate(batches):
            with self._gradient_sync(last=micro == accumulation - 1):
                with self._autocast():
                    nll, _, _, _ = lm_loss_sum(self.wrapped, input_ids, labels, mask)
                scaled = nll * weight
                if self.scaler is not None:
                    scaled = self.scaler.scale(scaled)
                scaled.backward()  # type: ignore[no-untyped-call]
            total += nll.detach().double()
        if self.env.distributed:
            dist.all_reduce(total)  # every rank sees the same value, so all stop together
        return total / supervised, read

    def _classifier_gradients(
        self, micro_batches: Iterator[torch.Tensor], *, epoch: int, step: int
    ) -> torch.Tensor:
        """Backward over the micro-batches, each loss a mean over its examples; the
        mean loss over every rank."""
        optim = self.config.optim
        inputs_all, labels_all = self.data.train.tensors
        total = torch.zeros((), device=self.device)
        for micro in range(optim.gradient_accumulation):
            indices = next(micro_batches)
            inputs = inputs_all[indices].to(self.device)
            labels = labels_all[indices].to(self.device)
            last = micro == optim.gradient_accumulation - 1
            with self._gradient_sync(last=last):
                with self._autocast():
                    loss, _, _ = task_loss(
                        self.wrapped,
                        inputs,
                        labels,
                        masked_lm=self.config.task == "masked-lm",
                        vocab_size=self.shape.vocab_size,
                        generator=self._mask_generator(epoch, step, micro),
                    )
                scaled = loss / optim.gradient_accumulation
                if self.scaler is not None:
                    scaled = self.scaler.scale(scaled)
                scaled.backward()  # type: ignore[no-untyped-call]
            total += loss.detach()
        mean = total / optim.gradient_accumulation
        if self.env.distributed:
            dist.all_reduce(mean)  # every rank sees the same value, so all stop together
            mean /= self.env.world_size
        return mean

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _mask_generator(self, epoch: int, step: int, micro: int) -> torch.Generator | None:
        if self.config.task != "masked-lm":
            return None
        seed = (self.config.optim.seed * 1_000_003 + epoch) * 1_000_003
        seed = (seed + step * 131 + micro) * 1_009 + self.env.rank
        return torch.Generator().manual_seed(seed % (2**63))

    # -- evaluation, checkpoints, the end ---------------------------------------------

    def _evaluate(self, epoch: int) -> dict[str, float]:
        """Validation metrics after `epoch` (0-based; -1: before training) on rank 0;
        the other ranks wait. A language model is evaluated by every rank, each on its
        share of the data."""
        if self.language:
            return self._evaluate_language_model(epoch)
        metrics: dict[str, float] = {}
        if self.env.is_main:
            self.reporter.update(phase="evaluating")
            metrics = evaluate(
                self.model,
                self.data.validation,
                task=self.config.task,
                metrics=self.metrics,
                num_classes=max(self.data.num_classes, 1),
                vocab_size=self.shape.vocab_size,
                device=self.device,
                autocast=self._autocast if self.autocast_dtype else None,
            )
            self.history.epochs[str(epoch + 1)] = metrics
            log.info(
                "epoch %d validation %s",
                epoch + 1,
                " ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
            )
            self.reporter.update(phase="training", metrics=metrics, metrics_step=self.position.step)
        self.env.barrier()
        return metrics

    def _evaluate_language_model(self, epoch: int) -> dict[str, float]:
        if self.env.is_main:
            self.reporter.update(phase="evaluating")
        metrics = evaluate_lm_sharded(
            self.wrapped if self.sharded else self.model,
            self.lm.validation,
            metrics=self.metrics,
            rank=self.env.rank,
            world_size=self.env.world_size,
            device=self.device,
            autocast=self._autocast if self.autocast_dtype else None,
        )
        key = str(epoch + 1)
        self.history.epochs[key] = metrics
        if self.env.is_main:
            log.info(
                "%s validation %s",
                "base model" if key == BASE_EPOCH else f"epoch {key}",
                " ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
            )
            if key == BASE_EPOCH:
                self.reporter.update(phase="training")  # not a trained epoch's metrics
            else:
                self.reporter.update(
                    phase="training", metrics=metrics, metrics_step=self.position.step
                )
        return metrics

    def _rng_states(self) -> list[torch.Tensor]:
        """Every rank's torch RNG state (dropout), gathered so rank 0 can save them all."""
        own = torch.get_rng_state()
        if not self.env.distributed:
            return [own]
        gathered: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(gathered, own)
        return gathered

    def _full_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(model, optimizer) state dicts, whole, on rank 0 (empty elsewhere). A language
        model's are gathered from the shards under FSDP, and keyed by parameter name
        either way, so a checkpoint resumes under DDP or FSDP alike."""
        if self.language:
            return fsdp.full_state(self.model, self.optimizer)
        if not self.env.is_main:
            return {}, {}
        return self.model.state_dict(), self.optimizer.state_dict()

    def _checkpoint(self) -> None:
        rng = self._rng_states()
        model_state, optimizer_state = self._full_state()  # a collective under FSDP
        if self.env.is_main:
            state = {
                "model": model_state,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else {},
                "position": [self.position.epoch, self.position.step_in_epoch, self.position.step],
                "rng": rng,
                "history_steps": self.history.steps,
                "history_epochs": self.history.epochs,
            }
            path = save_checkpoint(
                self.checkpoints,
                step=self.position.step,
                state=state,
                keep=self.config.checkpoint_keep,
            )
            if self.remote is not None:
                upload_checkpoint(
                    path, self.remote.child("checkpoints"), keep=self.config.checkpoint_keep
                )
        self.env.barrier()

    def _resume(self) -> None:
        if self.remote is not None:
            found = load_latest_remote(self.remote.child("checkpoints"), self.checkpoints)
            where = f"{self.remote.child('checkpoints/')}"
        else:
            found = load_latest(self.checkpoints)
            where = str(self.checkpoints)
        if found is None:
            return
        path, state = found
        try:
            if self.language:
                fsdp.load_full_state(
                    self.model,
                    self.optimizer,
                    model_state=state["model"],
                    optimizer_state=state["optimizer"],
                )
            else:
                self.model.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            # A checkpoint of another model under the same output (a changed spec, or a
            # run written by an older version): resuming it would be wrong, and starting
            # over silently would discard it.
            first = str(exc).strip().splitlines()[-1].strip()
            raise ConfigError(
                f"checkpoint {path} does not fit this run's model ({first}); use another "
                f"output or delete {where} to start over"
            ) from exc
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        epoch, step_in_epoch, step = state["position"]
        self.position = Position(epoch, step_in_epoch, step)
        rng = state["rng"]
        torch.set_rng_state(rng[self.env.rank] if self.env.rank < len(rng) else rng[0])
        self.history = History(
            steps=list(state["history_steps"]), epochs=dict(state["history_epochs"])
        )
        self.resumed_from = step
        if self.env.is_main:
            log.info("resumed from %s (step %d)", path.name, step)

    def _save_hf_artifact(
        self, metrics: dict[str, float], gathered: dict[str, torch.Tensor] | None
    ) -> str:
        """A Hugging Face folder plus the card: a causal LM, or a huggingface classifier."""
        from modelplane_runtime.lm.artifact import save_lm_artifact  # noqa: PLC0415

        return save_lm_artifact(
            self.output,
            model=self.model,
            state_dict=gathered,
            tokenizer=self.hf_tokenizer if self.hf_classifier else self.lm.tokenizer,
            config=self.config,
            metrics=metrics,
            history=self.history.to_json(),
            base_dir=self.base_dir,
            labels=self.data.preprocessing.labels if self.hf_classifier else None,
        )

    def _objective_by_step(self) -> dict[str, float]:
        objective = self.config.objective
        if objective is None:
            return {}
        if self.total_steps < self.steps_per_epoch * self.epochs_to_run:
            # cut short by maxSteps: the last epoch ended at the last step
            ends = sorted(
                (int(e), values[objective])
                for e, values in self.history.epochs.items()
                if objective in values and int(e) > 0
            )
            return {
                str(min(e * self.steps_per_epoch, self.total_steps)): float(v)
                for e, v in ends[-OBJECTIVE_EPOCHS:]
            }
        return objective_by_step(
            self.history.epochs,
            objective,
            steps=self.position.step,
            total_epochs=self.epochs_to_run,
        )

    def _finish(self, metrics: dict[str, float]) -> TrainingResult:
        result = TrainingResult(
            run=self.config.name,
            metrics=metrics,
            artifact_uri=artifact_uri(self.config),
            digest="",
            steps=self.position.step,
            epochs=self.epochs_to_run,
            objective_by_step=self._objective_by_step(),
        )
        gathered = fsdp.full_state(self.model)[0] if self.sharded else None  # a collective
        if self.env.is_main:
            self.reporter.update(phase="saving")
            digest = (
                self._save_hf_artifact(metrics, gathered)
                if self.language or self.hf_classifier
                else save_artifact(
                    self.output,
                    model=self.model,
                    config=self.config,
                    params=self.params,
                    shape=self.shape,
                    preprocessing=self.data.preprocessing,
                    tokenizer=self.data.tokenizer,
                    metrics=metrics,
                    history=self.history.to_json(),
                )
            )
            result = result.model_copy(update={"digest": digest})
            write_result(self.output, result)
            if self.remote is not None:
                publish(self.output, str(self.remote))
            self.reporter.update(phase="done", metrics=metrics)
        self.env.barrier()
        return result


def _smoothed(previous: float | None, value: float) -> float:
    return value if previous is None else 0.9 * previous + 0.1 * value


def _lm_tokenizer_folder() -> str:
    from modelplane_runtime.lm.tokenizer import STORE_FOLDER  # noqa: PLC0415

    return STORE_FOLDER


def objective_by_step(
    epochs: dict[str, dict[str, float]], metric: str, *, steps: int, total_epochs: int
) -> dict[str, float]:
    """`metric` at each epoch's end, keyed by the step it was reported at: every epoch has
    the same number of steps, so epoch e ends at step e * steps / total_epochs."""
    if total_epochs <= 0 or steps % total_epochs:
        return {}
    per_epoch = steps // total_epochs
    ends = sorted(
        (int(e), values[metric])
        for e, values in epochs.items()
        if metric in values and e != BASE_EPOCH
    )
    return {str(epoch * per_epoch): float(value) for epoch, value in ends[-OBJECTIVE_EPOCHS:]}


def finished_result(config: RunConfig) -> TrainingResult | None:
    """The result of an identical run that already finished, so a rerun does no work."""
    if is_remote(config.output_uri):
        with tempfile.TemporaryDirectory(prefix="modelplane-published-") as scratch:
            if not fetch_published(artifact_uri(config), Path(scratch)):
                return None
            return _identical_result(config, Path(scratch))
    return _identical_result(config, artifact_dir(config))


def _identical_result(config: RunConfig, directory: Path) -> TrainingResult | None:
    if not (directory / RESULT).is_file() or not (directory / CARD).is_file():
        return None
    card = json.loads((directory / CARD).read_text())
    if card.get("run_config") != config.model_dump(mode="json"):
        return None
    return TrainingResult.model_validate_json((directory / RESULT).read_text())
