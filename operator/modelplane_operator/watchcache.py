"""The children the operator already watches, read from memory instead of list calls.

kopf keeps in-memory indexes (`@kopf.index`) of watched objects, fills them from the
same watch streams the event handlers see, and starts no handler before every index has
its initial listing: a pass never sees a half-filled cache, the failure that makes
controller-runtime wait for its informers to sync. The handlers index training Jobs and
Pods and serving Deployments and Pods under `keys_of` below; `WatchCache` answers the
client's label-selected lists and gets from them.

An index is as fresh as the watch: the pass right after an apply may run before the
watch echoes it back, and would apply the same Job again (a write for nothing) or, for a
resized worker Deployment, decide the same resize again and record its Event twice. So
the client hands every object it applies to `wrote`, and reads return the newer of that
copy and the index's, newer by resourceVersion as client-go's MutationCache compares
them (etcd revisions, as integers); a copy leaves once the index has caught up with it
or after `WRITTEN_TTL_S`. Likewise an object the operator deleted is hidden until the
watch reports it gone. The resource itself is still read with a GET.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from modelplane_operator import constants as c

log = logging.getLogger("modelplane.watchcache")

Manifest = dict[str, Any]
IndexKey = tuple[str, str, str]
"""(namespace, label or "name", value)."""
Index = Mapping[IndexKey, Iterable[Manifest]]
"""What a kopf index is, read-only: the key -> the objects filed under it."""
OWNER_LABELS = (c.LABEL_TRAINING, c.LABEL_RUN, c.LABEL_DEPLOYMENT)
NAME = "name"
WRITTEN_TTL_S = 60.0
"""How long an applied object may stand in for the watch's copy: far beyond a watch's
lag on a live connection; a reconnect relists within it."""


def keys_of(
    namespace: str, name: str, labels: Mapping[str, str], body: Manifest
) -> dict[IndexKey, Manifest]:
    """Where an index files one object: under its name and each owner label it carries."""
    keys = [(namespace, NAME, name)]
    keys += [(namespace, label, labels[label]) for label in OWNER_LABELS if label in labels]
    return dict.fromkeys(keys, body)


INDEXES = {
    "training_jobs": "jobs",
    "training_pods": "pods",
    "serving_pods": "pods",
    "serving_deployments": "deployments",
}
"""The handlers' index functions (kopf names each index after its function) -> kind."""


class WatchCache:
    """The handlers' kopf indexes by kind ("jobs", "pods", "deployments"), bound from
    handler calls: kopf hands indexes to handlers only, as keyword arguments."""

    def __init__(self, *, clock: Any = time.monotonic) -> None:
        self.bound: dict[str, Index] = {}
        self.indexes: dict[str, list[Index]] = {}
        self.written: dict[tuple[str, str, str], tuple[float, Manifest]] = {}
        """(kind, namespace, name) -> (when, the object as the API server returned it),
        oldest first."""
        self.written_under: dict[tuple[str, IndexKey], set[tuple[str, str, str]]] = {}
        """(kind, index key) -> the written objects filed under it."""
        self.deleted: dict[tuple[str, str, str], float] = {}
        """(kind, namespace, name) -> when the operator deleted it: hidden from reads
        until the watch shows it gone, so the next pass does not delete it again."""
        self.clock = clock

    def wrote(self, kind: str, obj: Manifest) -> None:
        """Remember an object the operator just applied, until the watch shows it."""
        if kind not in self.indexes:
            return
        self._expire()
        meta = obj.get("metadata") or {}
        ident = (kind, meta["namespace"], meta["name"])
        self._drop(ident)
        self.deleted.pop(ident, None)
        self.written[ident] = (self.clock(), obj)
        for key in keys_of(meta["namespace"], meta["name"], meta.get("labels") or {}, obj):
            self.written_under.setdefault((kind, key), set()).add(ident)

    def deleting(self, kind: str, namespace: str, name: str) -> None:
        """The operator deleted an object: hide it until the watch says it is gone."""
        if kind in self.indexes:
            self._drop((kind, namespace, name))
            self.deleted[(kind, namespace, name)] = self.clock()

    def gone(self, kind: str, namespace: str, name: str) -> None:
        """The watch saw an object deleted: no copy of it stands in any more."""
        self._drop((kind, namespace, name))
        self.deleted.pop((kind, namespace, name), None)

    def _drop(self, ident: tuple[str, str, str]) -> None:
        written = self.written.pop(ident, None)
        if written is None:
            return
        meta = written[1]["metadata"]
        for key in keys_of(meta["namespace"], meta["name"], meta.get("labels") or {}, {}):
            idents = self.written_under.get((ident[0], key))
            if idents is not None:
                idents.discard(ident)
                if not idents:
                    del self.written_under[(ident[0], key)]

    def _expire(self) -> None:
        now = self.clock()
        while self.deleted:
            ident, when = next(iter(self.deleted.items()))
            if now - when <= WRITTEN_TTL_S:
                break
            del self.deleted[ident]
        while self.written:
            ident, (when, _) = next(iter(self.written.items()))
            if now - when <= WRITTEN_TTL_S:
                return
            self._drop(ident)

    def _lookup(self, kind: str, key: IndexKey) -> list[Manifest]:
        """The objects filed under `key`, each the newer of the watch's and the applied copy."""
        self._expire()
        found = {
            obj["metadata"]["name"]: obj
            for index in self.indexes[kind]
            for obj in index.get(key, ())
            if (kind, key[0], obj["metadata"]["name"]) not in self.deleted
        }
        for ident in list(self.written_under.get((kind, key), ())):
            obj = self.written[ident][1]
            seen = found.get(ident[2])
            if seen is not None and not _newer(obj, seen):
                self._drop(ident)  # the watch caught up
            else:
                found[ident[2]] = obj
        return list(found.values())

    def bind(self, kwargs: Mapping[str, Any]) -> None:
        """Take the indexes from a handler's keyword arguments (once each)."""
        if len(self.bound) == len(INDEXES):
            return
        for name, kind in INDEXES.items():
            if name in kwargs and name not in self.bound:
                self.bound[name] = kwargs[name]
                self.indexes.setdefault(kind, []).append(kwargs[name])
                log.info("reading %s from the watch index %s", kind, name)

    def select(self, kind: str, namespace: str, labels: Mapping[str, Any]) -> list[Manifest] | None:
        """The objects of `kind` in `namespace` with all of `labels`; None when the cache
        cannot answer (no index of that kind, or no owner label to look them up by)."""
        owner = next((label for label in OWNER_LABELS if label in labels), None)
        if kind not in self.indexes or owner is None:
            return None
        if not all(isinstance(value, str) for value in labels.values()):
            return None  # a set-based selector: the API server evaluates it
        key = (namespace, owner, labels[owner])
        return [obj for obj in self._lookup(kind, key) if _matches(obj, labels)]

    def covers(self, kind: str) -> bool:
        return kind in self.indexes

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        """The object of `kind` named `name`; None when there is none (or no index)."""
        if kind not in self.indexes:
            return None
        return next(iter(self._lookup(kind, (namespace, NAME, name))), None)


def _newer(obj: Manifest, than: Manifest) -> bool:
    """Whether `obj` is a later version than `than`, by resourceVersion; when either is
    not a number (not etcd), the watch's copy wins."""
    mine = str((obj.get("metadata") or {}).get("resourceVersion", ""))
    theirs = str((than.get("metadata") or {}).get("resourceVersion", ""))
    return mine.isdigit() and theirs.isdigit() and int(mine) > int(theirs)


def _matches(obj: Manifest, labels: Mapping[str, Any]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(key) == value for key, value in labels.items())
