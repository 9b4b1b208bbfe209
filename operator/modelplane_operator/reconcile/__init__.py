"""Level-based reconcile functions, one per kind."""

from __future__ import annotations

from typing import Any


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch that turns status `old` into `new`, or None when they are equal.

    A merge patch keeps the fields it does not mention, so the ones that went away are
    nulled (a deployment Rejected after serving has no endpoint any more); otherwise the
    stored status would keep them and differ from the derived one on every pass."""
    if new == old:
        return None
    return {**new, **{key: None for key in old if key not in new}}
