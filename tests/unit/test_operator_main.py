"""`python -m modelplane_operator`: the peering priority and lifetime that decide which of
several replicas reconciles, and how fast a standby takes over."""

from __future__ import annotations

import time
from typing import Any

import kopf
import pytest

from modelplane_operator import __main__ as operator_main
from modelplane_operator.__main__ import (
    TIE_RANGE,
    TIME_ORIGIN_MS,
    parse_args,
    peering_priority,
)

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
LAST_TIE = TIE_RANGE - 1


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        (NOW, NOW + 0.001),
        (NOW, NOW + 30),
        (NOW, NOW + 86_400 * 365),
        (TIME_ORIGIN_MS / 1000, NOW),
    ],
    ids=[
        "a replica started one millisecond earlier outranks",
        "a running standby outranks the container restarted after a SIGKILL",
        "a replica that has run for a year outranks a new one",
        "the first millisecond of the time origin outranks today",
    ],
)
def test_an_instance_started_earlier_outranks_a_later_one_whatever_the_tie_breakers(
    earlier: float, later: float
) -> None:
    assert peering_priority(earlier, 0) > peering_priority(later, LAST_TIE)


def test_replicas_started_in_the_same_millisecond_differ_by_their_tie_breakers() -> None:
    starts = [NOW, NOW + 0.0004, NOW + 0.001, NOW + 0.002]
    priorities = {peering_priority(s, t) for s in starts for t in range(TIE_RANGE)}
    # NOW and NOW + 0.4 ms are the same millisecond: those two share their 4096 values.
    assert len(priorities) == 3 * TIE_RANGE


@pytest.mark.parametrize(
    "started_at",
    [0.0, TIME_ORIGIN_MS / 1000, NOW, 4_000_000_000.0, 1e12],
    ids=[
        "a clock at 1970",
        "the time origin",
        "today",
        "the year 2096, past the 69 years the bits hold",
        "a clock far in the future",
    ],
)
def test_the_priority_fits_a_json_number_exactly(started_at: float) -> None:
    for tie in (0, LAST_TIE):
        assert 0 <= peering_priority(started_at, tie) < 2**53


def test_a_tie_breaker_outside_its_range_is_refused() -> None:
    with pytest.raises(ValueError, match="tie must be in"):
        peering_priority(NOW, TIE_RANGE)


def test_the_peering_lifetime_defaults_to_15_seconds() -> None:
    assert parse_args([]).peering_lifetime == 15
    assert parse_args(["--peering-lifetime=30"]).peering_lifetime == 30


@pytest.mark.parametrize(
    ("value", "message"),
    [("10", "must be at least 11"), ("15s", "not a whole number of seconds")],
    ids=["too short for kopfs keepalive", "not a number"],
)
def test_a_bad_peering_lifetime_is_refused_with_the_reason(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args([f"--peering-lifetime={value}"])
    err = capsys.readouterr().err
    assert "--peering-lifetime" in err
    assert message in err


@pytest.fixture
def kopf_run(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What main() hands to kopf.run, with logging left as the test session set it."""
    calls: dict[str, Any] = {}
    monkeypatch.setattr(operator_main, "configure_logs", lambda **_: None)
    monkeypatch.setattr(kopf, "run", lambda **kwargs: calls.update(kwargs))
    return calls


def test_a_peered_replica_runs_with_the_lifetime_and_a_priority_from_its_start(
    kopf_run: dict[str, Any],
) -> None:
    before = time.time()
    operator_main.main(["--peering=modelplane", "--peering-lifetime=20"])
    after = time.time()
    assert kopf_run["peering_name"] == "modelplane"
    assert kopf_run["standalone"] is False
    settings: kopf.OperatorSettings = kopf_run["settings"]
    assert settings.peering.lifetime == 20
    priority = kopf_run["priority"]
    assert peering_priority(after, 0) <= priority <= peering_priority(before, LAST_TIE)


def test_a_single_operator_runs_standalone(kopf_run: dict[str, Any]) -> None:
    operator_main.main(["--namespace=ml"])
    assert kopf_run["standalone"] is True
    assert kopf_run["priority"] is None
    assert kopf_run["namespaces"] == ["ml"]
    assert kopf_run["clusterwide"] is False
