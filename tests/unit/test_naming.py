"""Child names are deterministic, DNS-safe and short enough."""

from __future__ import annotations

import re

import pytest

from modelplane_operator.naming import child_name

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("sentiment", "train", "0"), "sentiment-train-0"),
        (("sentiment", ""), "sentiment"),
        (("digits", "head"), "digits-head"),
    ],
    ids=["short names are joined unchanged", "empty parts are skipped", "suffixes are kept"],
)
def test_short_names_are_readable(parts: tuple[str, ...], expected: str) -> None:
    assert child_name(*parts) == expected


def test_long_names_are_cut_to_63_with_a_hash_and_stay_dns_labels() -> None:
    name = child_name("a" * 80, "trial", "12")
    assert len(name) <= 63
    assert DNS_LABEL.match(name)
    assert name == child_name("a" * 80, "trial", "12")


def test_long_names_that_share_a_prefix_still_differ() -> None:
    assert child_name("x" * 70, "a") != child_name("x" * 70, "b")


def test_max_length_leaves_room_for_kubernetes_suffixes() -> None:
    name = child_name("m" * 60, "attempt", "3", max_length=56)
    assert len(name) <= 56
    assert DNS_LABEL.match(name)


def test_invalid_characters_are_replaced_and_hashed() -> None:
    name = child_name("My_Model", "x")
    assert DNS_LABEL.match(name)
    assert name != child_name("my-model", "x")
