"""Deterministic, DNS-safe names for child objects."""

from __future__ import annotations

import hashlib
import re

DNS_LABEL_MAX = 63
_HASH_LEN = 8
_INVALID = re.compile(r"[^a-z0-9-]+")


def child_name(parent: str, *parts: str, max_length: int = DNS_LABEL_MAX) -> str:
    """`<parent>-<part>-...`, lowercased, DNS-1123-label safe and at most `max_length`.

    The same inputs always give the same name, so a retried handler finds the child it
    made before instead of making a second one. A name too long is cut and ends with a
    hash of the whole name, so two long parents that share a prefix still differ.
    `max_length` leaves room for suffixes that Kubernetes adds itself (an Indexed Job's
    pods are `<job>-<index>`).
    """
    if max_length <= _HASH_LEN + 1:
        raise ValueError(f"max_length must exceed {_HASH_LEN + 1}, got {max_length}")
    full = "-".join(p for p in (parent, *parts) if p)
    name = _INVALID.sub("-", full.lower()).strip("-")
    if not name:
        raise ValueError("a child name needs at least one non-empty part")
    if len(name) <= max_length and name == full:
        return name
    digest = hashlib.sha256(full.encode()).hexdigest()[:_HASH_LEN]
    head = name[: max_length - _HASH_LEN - 1].rstrip("-")
    return f"{head}-{digest}" if head else f"m{digest}"
