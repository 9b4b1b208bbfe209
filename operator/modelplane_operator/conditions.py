"""Standard conditions: set one, keeping lastTransitionTime unless the status changed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from modelplane_operator.api.common import Condition

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event a status derivation asks the reconcile to record."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, the form Kubernetes writes."""
    if moment.tzinfo is None:
        raise ValueError("format_time needs a timezone-aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Condition],
    *,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    observed_generation: int,
    now: datetime,
) -> list[Condition]:
    """Return `conditions` with the condition of `type_` set.

    lastTransitionTime moves only when the status flips; reason, message and
    observedGeneration always follow the latest observation. Order is kept, and a new
    type is appended. The clock is injected so callers and tests stay deterministic.
    """
    existing = find_condition(conditions, type_)
    keep_time = existing is not None and existing.status == status
    condition = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=existing.last_transition_time
        if existing is not None and keep_time
        else format_time(now),
        observed_generation=observed_generation,
    )
    if existing is None:
        return [*conditions, condition]
    return [condition if c.type == type_ else c for c in conditions]


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """The condition of `type_`, or None."""
    return next((c for c in conditions if c.type == type_), None)
