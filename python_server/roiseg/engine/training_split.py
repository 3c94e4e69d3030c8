"""The ``training_split`` field of a model card: the images a model was trained on and held
out for validation, by name. Importable without torch (``roiseg evaluate`` reads it)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: The card field (docs/model-cards.md).
FIELD = "training_split"
_PARTS = ("training", "held_out")


@dataclass(frozen=True)
class TrainingSplit:
    """Image names (file stems, as `roiseg.train.data.image_stem` gives them) a model was
    trained on and held out for validation, each sorted."""

    training: tuple[str, ...]
    held_out: tuple[str, ...]

    @classmethod
    def of(cls, training: Iterable[str], held_out: Iterable[str]) -> TrainingSplit:
        """The split of these names, sorted."""
        return cls(tuple(sorted(training)), tuple(sorted(held_out)))

    @classmethod
    def from_json(cls, value: Any) -> TrainingSplit:
        """The split a card's ``{"training": [...], "held_out": [...]}`` records.

        Raises:
            ValueError: another shape, a name that is not a non-empty string, or a name
                listed twice; the message says which.
        """
        if not isinstance(value, dict) or set(value) != set(_PARTS):
            raise ValueError('must be {"training": [names], "held_out": [names]}')
        names: list[str] = []
        for part in _PARTS:
            listed = value[part]
            if not isinstance(listed, list) or not all(
                    isinstance(name, str) and name for name in listed):
                raise ValueError(f"'{part}' must be a list of image names, got {listed!r}")
            names += listed
        repeated = sorted(name for name, count in Counter(names).items() if count > 1)
        if repeated:
            raise ValueError("image name(s) listed twice: " + ", ".join(repeated))
        return cls.of(value["training"], value["held_out"])

    def to_json(self) -> dict[str, list[str]]:
        """The card field's value."""
        return {"training": list(self.training), "held_out": list(self.held_out)}
