"""Which images a model was trained on, as its card records them, so that an evaluation on
them is flagged.

`roiseg train` writes into the card's ``trained_on`` how many images it trained on and held
out ("70 for training, 15 held out for validation (split by image, seed 0)") and the command
that reproduces the run, with its ``--images`` and ``--masks`` or ``--annotations``
directories. The split is rebuilt from them with `roiseg.train.data.split_by_image`; the
command's relative paths are read from the current directory (the one it ran in, normally
the repository). A card that records no such split, or whose images are not found here, is
reported as unchecked rather than passed over in silence.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from roiseg.errors import RoisegError
from roiseg.train.data import find_annotated, find_pairs, image_stem, split_by_image

#: The embedded default model's directory (`roiseg.engine.models.DEFAULT_MODELS_DIR`, named
#: here without importing torch).
EMBEDDED_MODELS_DIR = Path(__file__).parents[1] / "default_model"
CARD_FILE = "model.json"
#: Names listed in a warning at the most.
_LISTED = 20
_SPLIT = re.compile(r"(\d+) for training, (\d+) held out for validation "
                    r"\(split by image, seed (-?\d+)\)")


@dataclass(frozen=True)
class TrainedOn:
    """A model ("id@version") and the images its card says it was trained on and held out
    (by file stem), or why they are not known (`unknown`)."""

    model: str
    training: frozenset[str] = frozenset()
    held_out: frozenset[str] = frozenset()
    unknown: str = ""


def trained_on(model_id: str, version: str, text: str) -> TrainedOn:
    """The training split a card's ``trained_on`` `text` records, rebuilt from its data."""
    model = f"{model_id}@{version}"
    split = _SPLIT.search(text)
    command = text.partition("Command: ")[2]
    if split is None or not command:
        return TrainedOn(model, unknown="its card records no `roiseg train` split")
    n_training, n_held_out, seed = (int(v) for v in split.groups())
    try:
        names = _training_names(shlex.split(command))
    except (OSError, ValueError, RoisegError) as error:
        return TrainedOn(model, unknown=f"its training images are not readable here ({error})")
    if len(names) != n_training + n_held_out:
        return TrainedOn(model, unknown=f"its training directory holds {len(names)} images "
                                        f"here, the card counts {n_training + n_held_out}")
    training, held_out = split_by_image(names, n_held_out / len(names), seed)
    return TrainedOn(model, frozenset(names[i] for i in training),
                     frozenset(names[i] for i in held_out))


def card_trained_on(model_id: str, version: str, directories: Sequence[Path]) -> TrainedOn:
    """`trained_on` of the card of `model_id` in `directories` (``DIR/model.json`` and
    ``DIR/*/model.json``, as the server finds them)."""
    for directory in directories:
        for path in [directory / CARD_FILE, *sorted(directory.glob(f"*/{CARD_FILE}"))]:
            card = _read_card(path)
            if card.get("id") != model_id:
                continue
            if str(card.get("version")) != version:
                return TrainedOn(f"{model_id}@{version}",
                                 unknown=f"its card in {path.parent} is of version "
                                         f"{card.get('version')}")
            return trained_on(model_id, version, str(card.get("trained_on") or ""))
    return TrainedOn(f"{model_id}@{version}",
                     unknown="no card of it in " + ", ".join(map(str, directories))
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


def _training_names(argv: Sequence[str]) -> list[str]:
    """The sample names `roiseg train` gave the images of the command `argv`, in its order."""
    images, masks = _option(argv, "--images"), _option(argv, "--masks")
    annotations = _option(argv, "--annotations")
    if images is not None and masks is not None:
        return [image.stem for image, _ in find_pairs(Path(images), Path(masks))]
    if images is not None and annotations is not None:
        return [image_stem(image) for image, _ in find_annotated(Path(images), Path(annotations))]
    raise ValueError("its command names no --images with --masks or --annotations")


def _option(argv: Sequence[str], name: str) -> str | None:
    """The value of option `name` in `argv` (``NAME VALUE`` or ``NAME=VALUE``)."""
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


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
