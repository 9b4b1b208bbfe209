"""Examples as read from a source, before any preprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from modelplane_runtime.contract import DataKind

Kind = DataKind
"""What a data set's examples are (the contract's DataKind: one table for the operator and here)."""


@dataclass(frozen=True)
class RawData:
    """Inputs and their labels (class names as strings; None for unlabelled text)."""

    kind: Kind
    texts: tuple[str, ...] = ()
    """Text examples (kind text), or one JSON record per example (kind chat)."""
    array: npt.NDArray[np.float32] | None = None
    """Images [N, C, H, W] or table rows [N, F] (kinds image, tabular)."""
    labels: tuple[str, ...] | None = None
    feature_names: tuple[str, ...] = ()
    """Column names of a table, in order (kind tabular)."""

    def __len__(self) -> int:
        return len(self.texts) if self.kind in ("text", "chat") else len(self._array())

    def _array(self) -> npt.NDArray[np.float32]:
        if self.array is None:
            raise ValueError(f"{self.kind} data without an array")
        return self.array

    def subset(self, indices: npt.NDArray[np.int64]) -> RawData:
        """The examples at `indices`, in that order."""
        labels = None if self.labels is None else tuple(self.labels[i] for i in indices)
        if self.kind in ("text", "chat"):
            texts = tuple(self.texts[i] for i in indices)
            return RawData(kind=self.kind, texts=texts, labels=labels)
        return RawData(
            kind=self.kind,
            array=self._array()[indices],
            labels=labels,
            feature_names=self.feature_names,
        )
