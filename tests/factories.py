"""Fluent factories for test resources: a valid default plus the changes a test cares about."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
INVALID_EXAMPLES = EXAMPLES / "invalid"

_DELETE = object()


def delete() -> Any:
    """Marker for `changed`: remove the field."""
    return _DELETE


def changed(obj: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `obj` with dotted paths set (`{"spec.replicas.min": 5}`)."""
    result = copy.deepcopy(obj)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = result
        for key in parents:
            node = node.setdefault(key, {})
        if value is _DELETE:
            node.pop(last, None)
        else:
            # A copy: a later path may reach into it, and the caller's value (a shared
            # table in a test module) must not change under the next test.
            node[last] = copy.deepcopy(value)
    return result


def make_training(changes: dict[str, Any] | None = None, *, name: str = "demo") -> dict[str, Any]:
    """A minimal valid ModelTraining, with `changes` applied."""
    base = {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelTraining",
        "metadata": {"name": name},
        "spec": {
            "model": {"architecture": "mlp", "task": "tabular-classification"},
            "data": {"train": {"uri": "builtin://breast-cancer"}},
            "output": {"uri": "pvc://models/demo"},
        },
    }
    return changed(base, changes or {})


def make_tuning(**space: dict[str, Any]) -> dict[str, Any]:
    """A valid spec.tuning over `space` (default: learning rate)."""
    return {
        "objective": {"metric": "f1"},
        "space": space or {"learningRate": {"type": "loguniform", "min": 1e-4, "max": 1e-2}},
    }


def make_deployment(changes: dict[str, Any] | None = None, *, name: str = "demo") -> dict[str, Any]:
    """A minimal valid ModelDeployment, with `changes` applied."""
    base = {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"fromTraining": "demo"}},
    }
    return changed(base, changes or {})


def expected_message(path: Path) -> str:
    """The `# expect:` line of an invalid example: text its rejection must contain."""
    for line in path.read_text().splitlines():
        if line.startswith("# expect:"):
            return line.removeprefix("# expect:").strip()
    raise AssertionError(f"{path} has no '# expect:' line")
