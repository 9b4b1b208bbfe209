"""DDP over Gloo: two processes reach the weights one process reaches."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from modelplane_runtime.contract import OptimConfig
from tests.runtime.conftest import make_config, run_processes

# Two ranks average two half-batch gradients where one process averages one full batch:
# the same sums in another order, so float rounding may differ in the last bits.
TOLERANCE = 1e-5


def test_two_gloo_processes_reach_the_weights_of_one_with_the_same_global_batch(
    tmp_path: Path,
) -> None:
    optim = OptimConfig(epochs=3, batch_size=32, learning_rate=1e-3, seed=7)
    single = make_config(tmp_path / "one", name="eq", optim=optim)
    double = make_config(tmp_path / "two", name="eq", optim=optim)
    (one,) = run_processes(single, tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    both = run_processes(double, tmp_path, world_size=2)
    assert [p.returncode for p in both] == [0, 0], [p.stderr[-2000:] for p in both]
    a = load_file(str(tmp_path / "one" / "out" / "eq" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "out" / "eq" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < TOLERANCE, worst
    # and they really trained: the weights moved away from their initialisation
    assert max(float(a[k].abs().max()) for k in a) > 0.05


def test_a_batch_that_does_not_split_over_the_processes_is_a_config_error(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, optim=OptimConfig(epochs=1, batch_size=33))
    results = run_processes(config, tmp_path, world_size=2)
    assert [p.returncode for p in results] == [42, 42]
    assert "must be divisible by the 2 training processes" in results[0].stderr
