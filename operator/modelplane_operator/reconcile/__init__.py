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


def owned_by(objects: list[dict[str, Any]], uid: str | None) -> list[dict[str, Any]]:
    """The objects that `uid` owns (every one when the owner's uid is unknown). Children
    come from the watch index, which after a watch outage can still hold those of a
    deleted resource of the same name: they are not this resource's."""
    if not uid:
        return objects
    return [
        obj
        for obj in objects
        if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])
    ]
