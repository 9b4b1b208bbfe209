"""The runtime's training loop against a minimal hand-written torch loop.

Same model, data, batch size, optimizer, clipping and schedule; each variant runs in its
own fresh process (so peak memory is its own), alternating A, B, A, B, ... and the
medians are compared. Throughput is timed over optimizer steps only: the runtime's
per-epoch evaluation, checkpoints and artifact writing fall outside the window (one
epoch, no checkpoint inside it).

    .venv/bin/python bench/training.py                 # CPU, transformer on sentiment
    .venv/bin/python bench/training.py --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modelplane_runtime.contract import DataConfig, OptimConfig, RunConfig

PARAMS = {"layers": 4, "hidden": 128, "heads": 4, "max_length": 64, "vocab_size": 2000}
BATCH = 64
WARMUP_STEPS = 3  # excluded: first steps pay for allocator and kernel warm-up


def config(out: Path) -> RunConfig:
    return RunConfig(
        name="bench",
        architecture="transformer",
        task="text-classification",
        params=PARAMS,
        data=DataConfig(train_uri="builtin://sentiment", validation_split=0.1),
        optim=OptimConfig(epochs=1, batch_size=BATCH, learning_rate=1e-3, warmup_steps=5),
        output_uri=f"file://{out}",
        progress_port=0,
        checkpoint_every_steps=10**9,
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_runtime(out: Path) -> dict[str, float]:
    from modelplane_runtime.train.distributed import DistEnv  # noqa: PLC0415
    from modelplane_runtime.train.loop import Trainer  # noqa: PLC0415

    stamps: list[float] = []
    trainer = Trainer(
        config(out), env=DistEnv(), on_step=lambda _: stamps.append(time.perf_counter())
    )
    trainer.fit()
    timed = stamps[WARMUP_STEPS:]
    seconds = timed[-1] - timed[0]
    return {
        "samples_per_second": BATCH * (len(timed) - 1) / seconds,
        "steps": len(stamps),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_manual(out: Path) -> dict[str, float]:
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: N812, PLC0415

    from modelplane_runtime.data.prepare import prepare  # noqa: PLC0415
    from modelplane_runtime.models.registry import DataShape, build_model  # noqa: PLC0415
    from modelplane_runtime.train.schedule import lr_multiplier  # noqa: PLC0415

    cfg = config(out)
    torch.manual_seed(cfg.optim.seed)
    data = prepare(cfg)
    model = build_model(
        cfg.architecture,
        cfg.task,
        cfg.params,
        DataShape(num_classes=data.num_classes, vocab_size=data.vocab_size),
    )
    device = torch.device(
        sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
    )
    model.to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.learning_rate, weight_decay=cfg.optim.weight_decay
    )
    x, y = data.train.tensors
    steps = len(x) // BATCH
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(schedule="cosine", warmup_steps=5, total_steps=steps)
    )
    order = torch.randperm(len(x))
    stamps = []
    for step in range(steps):
        index = order[step * BATCH : (step + 1) * BATCH]
        loss = F.cross_entropy(model(x[index].to(device)), y[index].to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss)  # the runtime reads the loss every step too (progress, NaN check)
        stamps.append(time.perf_counter())
    timed = stamps[WARMUP_STEPS:]
    return {
        "samples_per_second": BATCH * (len(timed) - 1) / (timed[-1] - timed[0]),
        "steps": steps,
        "peak_rss_mb": peak_rss_mb(),
    }


def worker(kind: str) -> None:
    with tempfile.TemporaryDirectory() as out:
        result = run_runtime(Path(out)) if kind == "runtime" else run_manual(Path(out))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", choices=["runtime", "manual"])
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    results: dict[str, list[dict[str, float]]] = {"runtime": [], "manual": []}
    for round_ in range(args.rounds):
        for kind in ("manual", "runtime"):
            line = (
                subprocess.run(
                    [sys.executable, __file__, "--worker", kind, "--device", args.device],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            results[kind].append(json.loads(line))
            print(f"round {round_ + 1} {kind:8s} {results[kind][-1]}", file=sys.stderr)
    med = {k: statistics.median(r["samples_per_second"] for r in v) for k, v in results.items()}
    rss = {k: max(r["peak_rss_mb"] for r in v) for k, v in results.items()}
    print(
        f"model: transformer {PARAMS}, batch {BATCH}, device {args.device}, "
        f"{args.rounds} rounds, {int(results['runtime'][0]['steps'])} steps each"
    )
    print(
        f"samples/s  manual {med['manual']:.0f}  runtime {med['runtime']:.0f}  "
        f"ratio runtime/manual {med['runtime'] / med['manual']:.3f} (goal >= 0.95)"
    )
    print(
        f"peak RSS   manual {rss['manual']:.0f} MB  runtime {rss['runtime']:.0f} MB  "
        f"ratio {rss['runtime'] / rss['manual']:.3f}"
    )


if __name__ == "__main__":
    main()
