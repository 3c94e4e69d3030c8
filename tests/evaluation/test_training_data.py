"""Evaluations on a model's own training images are flagged: the models come from the
predictions' metadata, their training images from the split their cards record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import GLAS
from roiseg.cli import main as roiseg_main
from roiseg.engine.models import DEFAULT_MODELS_DIR
from roiseg.evaluation.training_data import (
    EMBEDDED_MODELS_DIR,
    TrainedOn,
    card_trained_on,
    training_data_warnings,
)

CARD = json.loads((DEFAULT_MODELS_DIR / "model.json").read_text())
MODEL = f"{CARD['id']}@{CARD['version']}"
GLAND = "Gland epithelium"
#: GlaS images the default model was trained on, and one it held out for validation.
TRAINING, HELD_OUT = "train_3", "train_2"
FLAGGED = f"were used to train {MODEL}"


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Nothing depends on the current directory: run from an empty one."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def predictions(tmp_path_factory) -> Path:
    """The default model's GeoJSON of a training and a held-out GlaS image."""
    out = tmp_path_factory.mktemp("predictions")
    for name in (TRAINING, HELD_OUT):
        assert roiseg_main(["segment", str(GLAS / "images" / f"{name}.png"), "--mpp", "0.62",
                            "-o", str(out / f"{name}.geojson"), "--device", "cpu"]) == 0
    return out


def _evaluate(pred: Path, truth: Path, out: Path) -> int:
    return roiseg_main(["evaluate", str(pred), str(truth), "--truth-values",
                        f"0=Stroma,255={GLAND}", "--positive", GLAND, "--out", str(out)])


def test_the_default_cards_split_is_read_from_its_card():
    split = card_trained_on(CARD["id"], CARD["version"], [EMBEDDED_MODELS_DIR])
    recorded = CARD["training_split"]
    assert split == TrainedOn(MODEL, frozenset(recorded["training"]),
                              frozenset(recorded["held_out"]))
    assert len(split.training) == 70 and len(split.held_out) == 15
    assert TRAINING in split.training and HELD_OUT in split.held_out
    assert EMBEDDED_MODELS_DIR == DEFAULT_MODELS_DIR


def test_evaluating_a_training_image_warns_loudly(predictions, tmp_path, capsys):
    out = tmp_path / "out"
    assert _evaluate(predictions / f"{TRAINING}.geojson", GLAS / "masks" / f"{TRAINING}.png",
                     out) == 0
    err = capsys.readouterr().err
    warning = f"WARNING: 1 of the 1 evaluated image(s) {FLAGGED}: {TRAINING}."
    assert warning in err
    summary = (out / "summary.md").read_text()
    assert f"**{warning}" in summary and HELD_OUT in summary  # names what to evaluate on
    # A directory of predictions: only the training image counts.
    truth = tmp_path / "masks"
    truth.mkdir()
    for name in (TRAINING, HELD_OUT):
        shutil.copy(GLAS / "masks" / f"{name}.png", truth)
    assert _evaluate(predictions, truth, tmp_path / "both") == 0
    assert f"WARNING: 1 of the 2 evaluated image(s) {FLAGGED}: {TRAINING}." \
        in capsys.readouterr().err


def test_a_held_out_image_gets_no_warning(predictions, tmp_path, capsys):
    out = tmp_path / "out"
    assert _evaluate(predictions / f"{HELD_OUT}.geojson", GLAS / "masks" / f"{HELD_OUT}.png",
                     out) == 0
    err = capsys.readouterr().err
    summary = (out / "summary.md").read_text()
    for text in (err, summary):
        assert "WARNING" not in text and "NOTE" not in text


def test_models_whose_training_images_are_unknown_are_noted(tmp_path):
    _write_card(tmp_path / "hand-made", {key: value for key, value in CARD.items()
                                         if key != "training_split"}, id="hand-made")
    hand_made = card_trained_on("hand-made", CARD["version"], [tmp_path])
    assert hand_made.unknown == "its card records no training split (training_split)"
    _write_card(tmp_path / "broken", CARD, id="broken",
                training_split={"training": ["a", "b"], "held_out": ["b"]})
    broken = card_trained_on("broken", CARD["version"], [tmp_path])
    assert broken.unknown == ("its card's training_split is invalid (image name(s) listed "
                              "twice: b)")
    other_version = card_trained_on(CARD["id"], "0.1.0", [EMBEDDED_MODELS_DIR])
    assert other_version.unknown == f"its card in {EMBEDDED_MODELS_DIR} is of version 0.4.0"
    missing = card_trained_on("elsewhere", "1", [tmp_path])
    assert "no card of it" in missing.unknown and "--models" in missing.unknown
    notes = training_data_warnings({TRAINING: [hand_made, missing]})
    assert notes == [
        "NOTE: whether the evaluated images were among the training images of "
        f"hand-made@{CARD['version']} could not be checked: {hand_made.unknown}.",
        "NOTE: whether the evaluated images were among the training images of elsewhere@1 "
        f"could not be checked: {missing.unknown}."]


def test_the_card_of_the_evaluated_version_is_found_in_any_directory(tmp_path):
    _write_card(tmp_path / "older", CARD, version="0.3.0",
                training_split={"training": [HELD_OUT], "held_out": []})
    found = card_trained_on(CARD["id"], CARD["version"], [tmp_path, EMBEDDED_MODELS_DIR])
    assert found.training == frozenset(CARD["training_split"]["training"])
    older = card_trained_on(CARD["id"], "0.3.0", [tmp_path, EMBEDDED_MODELS_DIR])
    assert older.training == {HELD_OUT} and not older.held_out


def _write_card(directory: Path, card: dict, **fields) -> None:
    """``directory/model.json``: `card` with `fields` replaced."""
    directory.mkdir()
    (directory / "model.json").write_text(json.dumps({**card, **fields}))
