"""Conditions keep their transition time unless the status flips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelplane_operator.conditions import find_condition, format_time, set_condition

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_a_new_condition_is_stamped_with_now_and_the_generation() -> None:
    (cond,) = set_condition(
        [],
        type_="Ready",
        status="False",
        reason="Pending",
        message="m",
        observed_generation=3,
        now=T0,
    )
    assert cond.last_transition_time == "2026-01-02T03:04:05Z"
    assert cond.observed_generation == 3


def test_same_status_keeps_transition_time_but_updates_reason_and_generation() -> None:
    first = set_condition(
        [], type_="Ready", status="False", reason="A", message="a", observed_generation=1, now=T0
    )
    second = set_condition(
        first,
        type_="Ready",
        status="False",
        reason="B",
        message="b",
        observed_generation=2,
        now=T1,
    )
    cond = find_condition(second, "Ready")
    assert cond is not None
    assert (cond.reason, cond.message, cond.observed_generation) == ("B", "b", 2)
    assert cond.last_transition_time == format_time(T0)


def test_a_status_flip_moves_the_transition_time() -> None:
    first = set_condition(
        [], type_="Ready", status="False", reason="A", message="", observed_generation=1, now=T0
    )
    second = set_condition(
        first,
        type_="Ready",
        status="True",
        reason="Ok",
        message="",
        observed_generation=1,
        now=T1,
    )
    assert second[0].last_transition_time == format_time(T1)


def test_other_conditions_are_kept_in_order() -> None:
    conds = set_condition(
        [], type_="Ready", status="False", reason="A", message="", observed_generation=1, now=T0
    )
    conds = set_condition(
        conds,
        type_="Progressing",
        status="True",
        reason="B",
        message="",
        observed_generation=1,
        now=T0,
    )
    conds = set_condition(
        conds,
        type_="Ready",
        status="True",
        reason="C",
        message="",
        observed_generation=1,
        now=T1,
    )
    assert [c.type for c in conds] == ["Ready", "Progressing"]


def test_a_naive_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(datetime(2026, 1, 1))


def test_a_status_patch_nulls_what_went_away_and_is_none_when_nothing_changed() -> None:
    from modelplane_operator.reconcile import status_patch  # noqa: PLC0415

    old = {"phase": "Running", "progress": {"percent": 40}, "endpoint": "http://x"}
    new = {"phase": "Succeeded", "metrics": {"f1": 0.9}}
    assert status_patch(old, new) == {
        "phase": "Succeeded",
        "metrics": {"f1": 0.9},
        "progress": None,
        "endpoint": None,
    }
    assert status_patch(new, dict(new)) is None
