"""Data sets that ship inside installed packages: nothing is downloaded at run time.

- `builtin://digits` — scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes),
  scaled to [0, 1].
- `builtin://breast-cancer` — scikit-learn's Wisconsin breast-cancer table (569 rows, 30
  features, 2 classes).
- `builtin://sentiment` — 2,000 short movie reviews that this module generates
  deterministically (positive/negative words, intensifiers, negation that flips the
  label), so text models have something real to learn without a download.
- `builtin://chat` — 800 generated chat conversations (`messages` records) whose
  answers follow fixed rules (sums, capitals, colours, reversed and upper-cased words,
  letter counts), so a fine-tuned language model's perplexity on the answers can drop
  far; some carry a system message and some have two exchanges.
"""

from __future__ import annotations

import json
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


_CAPITALS = (
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("Canada", "Ottawa"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Poland", "Warsaw"),
    ("Greece", "Athens"),
    ("Chile", "Santiago"),
    ("India", "New Delhi"),
    ("Ireland", "Dublin"),
    ("Portugal", "Lisbon"),
)
_COLOURS = (
    ("banana", "yellow"),
    ("lemon", "yellow"),
    ("strawberry", "red"),
    ("tomato", "red"),
    ("grass", "green"),
    ("leaf", "green"),
    ("sky", "blue"),
    ("ocean", "blue"),
    ("snow", "white"),
    ("milk", "white"),
    ("coal", "black"),
    ("crow", "black"),
    ("orange", "orange"),
    ("carrot", "orange"),
)
_WORDS = (
    "apple",
    "river",
    "garden",
    "window",
    "pencil",
    "rocket",
    "candle",
    "forest",
    "silver",
    "planet",
    "yellow",
    "button",
    "castle",
    "dragon",
    "summer",
    "basket",
    "mirror",
    "tiger",
    "cloud",
    "stone",
)
_SYSTEMS = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in one sentence.",
    "Answer the user's question.",
)

ChatRecord = dict[str, list[dict[str, str]]]
"""One conversation: {"messages": [{"role": ..., "content": ...}, ...]}."""


def _exchange(rng: random.Random) -> tuple[str, str]:
    """One question and the answer its rule gives."""
    rule = rng.randrange(6)
    if rule == 0:
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if rule == 1:
        country, capital = rng.choice(_CAPITALS)
        return (
            f"What is the capital of {country}?",
            f"The capital of {country} is {capital}.",
        )
    if rule == 2:
        thing, colour = rng.choice(_COLOURS)
        return f"What colour is {thing}?", f"The {thing} is {colour}."
    word = rng.choice(_WORDS)
    if rule == 3:
        return f"Reverse the word {word}.", f"{word} reversed is {word[::-1]}."
    if rule == 4:
        return f"Write {word} in capital letters.", f"{word} in capital letters is {word.upper()}."
    return (
        f"How many letters are in the word {word}?",
        f"The word {word} has {len(word)} letters.",
    )


def chat_records(count: int = 800, seed: int = 4321) -> list[ChatRecord]:
    """Generated conversations for supervised fine-tuning; the same every time."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": rng.choice(_SYSTEMS)})
        for _ in range(2 if rng.random() < 0.15 else 1):
            question, answer = _exchange(rng)
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer})
        records.append({"messages": messages})
    return records


def chat() -> RawData:
    """builtin://chat as RawData: one JSONL line per conversation (the language-model
    reader, `modelplane_runtime.lm.data`, reads `chat_records` itself)."""
    return RawData(kind="chat", texts=tuple(json.dumps(r) for r in chat_records()))


BUILTIN: dict[str, tuple[Kind, Callable[[], RawData]]] = {
    "sentiment": ("text", sentiment),
    "digits": ("image", digits),
    "breast-cancer": ("tabular", breast_cancer),
    "chat": ("chat", chat),
}
