"""Data sets that ship inside installed packages: nothing is downloaded at run time.

- `builtin://digits` — scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes),
  scaled to [0, 1].
- `builtin://breast-cancer` — scikit-learn's Wisconsin breast-cancer table (569 rows, 30
  features, 2 classes).
- `builtin://sentiment` — 2,000 short movie reviews that this module generates
  deterministically (positive/negative words, intensifiers, negation that flips the
  label), so text models have something real to learn without a download.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from modelplane_runtime.data.raw import Kind, RawData

_POSITIVE = (
    "good",
    "great",
    "excellent",
    "wonderful",
    "lovely",
    "superb",
    "delightful",
    "amazing",
    "pleasant",
    "brilliant",
    "fantastic",
    "enjoyable",
    "charming",
    "moving",
)
_NEGATIVE = (
    "bad",
    "terrible",
    "awful",
    "poor",
    "boring",
    "dreadful",
    "horrible",
    "disappointing",
    "mediocre",
    "annoying",
    "dull",
    "weak",
    "clumsy",
    "tedious",
)
_NOUNS = (
    "movie",
    "film",
    "story",
    "acting",
    "plot",
    "soundtrack",
    "ending",
    "cast",
    "script",
    "direction",
    "pacing",
    "dialogue",
    "camera work",
    "finale",
)
_INTENSIFIERS = ("", "really ", "truly ", "very ", "quite ", "so ", "incredibly ")
_OPENERS = ("", "honestly ", "overall ", "in the end ", "to be fair ", "i must say ")


def sentiment(count: int = 2000, seed: int = 1234) -> RawData:
    """Generated reviews labelled positive or negative; the same every time."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(count):
        positive = rng.random() < 0.5
        negated = rng.random() < 0.25
        words = _POSITIVE if positive != negated else _NEGATIVE
        adjective, other = rng.choice(words), rng.choice(words)
        noun, noun2 = rng.choice(_NOUNS), rng.choice(_NOUNS)
        very, opener = rng.choice(_INTENSIFIERS), rng.choice(_OPENERS)
        if negated:
            text = rng.choice(
                (
                    f"{opener}the {noun} was not {very}{adjective}",
                    f"{opener}i would not call the {noun} {adjective}",
                    f"{opener}the {noun} was never {adjective} and not {other} either",
                )
            )
        else:
            text = rng.choice(
                (
                    f"{opener}the {noun} was {very}{adjective}",
                    f"{opener}what a {adjective} {noun}",
                    f"{opener}a {very}{adjective} {noun} with {other} {noun2}",
                    f"{opener}i found the {noun} {adjective} and the {noun2} {other}",
                )
            )
        texts.append(text.strip())
        labels.append("positive" if positive else "negative")
    return RawData(kind="text", texts=tuple(texts), labels=tuple(labels))


def digits() -> RawData:
    from sklearn.datasets import load_digits  # noqa: PLC0415  (heavy import, used rarely)

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    return RawData(kind="image", array=images, labels=tuple(str(t) for t in bunch.target))


def breast_cancer() -> RawData:
    from sklearn.datasets import load_breast_cancer  # noqa: PLC0415

    bunch = load_breast_cancer()
    names = tuple(str(bunch.target_names[t]) for t in bunch.target)
    return RawData(
        kind="tabular",
        array=bunch.data.astype(np.float32),
        labels=names,
        feature_names=tuple(str(f) for f in bunch.feature_names),
    )


BUILTIN: dict[str, tuple[Kind, Callable[[], RawData]]] = {
    "sentiment": ("text", sentiment),
    "digits": ("image", digits),
    "breast-cancer": ("tabular", breast_cancer),
}
