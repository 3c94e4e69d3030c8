"""Which images a model was trained on, as its card records them, so that an evaluation on
them is flagged.

`roiseg train` writes the names of the images it trained on and held out for validation into
the card's ``training_split`` (`roiseg.engine.training_split`). A card that records none, or
a model whose card is not found, is reported as unchecked rather than passed over in silence.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roiseg.engine.training_split import FIELD, TrainingSplit

#: The embedded default model's directory (`roiseg.engine.models.DEFAULT_MODELS_DIR`, named
#: here without importing torch).
EMBEDDED_MODELS_DIR = Path(__file__).parents[1] / "default_model"
CARD_FILE = "model.json"
#: Names listed in a warning at the most.
_LISTED = 20


@dataclass(frozen=True)
class TrainedOn:
    """A model ("id@version") and the images its card says it was trained on and held out
    (by file stem), or why they are not known (`unknown`)."""

    model: str
    training: frozenset[str] = frozenset()
    held_out: frozenset[str] = frozenset()
    unknown: str = ""


def card_trained_on(model_id: str, version: str, directories: Sequence[Path]) -> TrainedOn:
    """The training split recorded by the card of `model_id` at `version`: the first such
    card in `directories` (``DIR/model.json``, then ``DIR/*/model.json``, as the server
    finds them)."""
    model = f"{model_id}@{version}"
    other_versions = []
    for path in _card_paths(directories):
        card = _read_card(path)
        if card.get("id") != model_id:
            continue
        if str(card.get("version")) == version:
            return _recorded(model, card)
        other_versions.append(f"its card in {path.parent} is of version {card.get('version')}")
    if other_versions:
        return TrainedOn(model, unknown="; ".join(other_versions))
    return TrainedOn(model, unknown="no card of it in " + ", ".join(map(str, directories))
                                    + " (pass --models DIR)")


def training_data_warnings(evaluated: Mapping[str, Collection[TrainedOn]]) -> list[str]:
    """For each evaluated image (by stem) the models whose predictions were scored on it: a
    WARNING per model that was trained on some of them (their scores flatter it), and a
    NOTE per model whose training images are unknown."""
    images: dict[str, list[str]] = {}
    models: dict[str, TrainedOn] = {}
    for name, trained in evaluated.items():
        for model in trained:
            models[model.model] = model
            images.setdefault(model.model, []).append(name)
    warnings, notes = [], []
    for key, model in models.items():
        if model.unknown:
            notes.append(f"NOTE: whether the evaluated images were among the training images "
                         f"of {key} could not be checked: {model.unknown}.")
            continue
        seen = sorted(set(images[key]) & model.training)
        if seen:
            held_out = (f" (its card holds out {_listed(model.held_out)})"
                        if model.held_out else "")
            warnings.append(
                f"WARNING: {len(seen)} of the {len(set(images[key]))} evaluated image(s) "
                f"were used to train {key}: {_listed(seen)}. Its scores on them overstate how "
                "well it does on new images; evaluate it on images it was not trained on"
                f"{held_out}.")
    return warnings + notes


def _recorded(model: str, card: Mapping[str, Any]) -> TrainedOn:
    """The training split of `model` that `card` (a card's fields) records."""
    if card.get(FIELD) is None:
        return TrainedOn(model, unknown=f"its card records no training split ({FIELD})")
    try:
        split = TrainingSplit.from_json(card[FIELD])
    except ValueError as error:
        return TrainedOn(model, unknown=f"its card's {FIELD} is invalid ({error})")
    return TrainedOn(model, frozenset(split.training), frozenset(split.held_out))


def _card_paths(directories: Sequence[Path]) -> Iterator[Path]:
    """``DIR/model.json`` and ``DIR/*/model.json`` of each directory, in order."""
    for directory in directories:
        yield directory / CARD_FILE
        yield from sorted(directory.glob(f"*/{CARD_FILE}"))


def _read_card(path: Path) -> dict:
    """A card's fields, or none when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _listed(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:_LISTED]) + (", …" if len(names) > _LISTED else "")
