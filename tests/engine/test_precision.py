"""Reduced precision: checked on held-out images, recorded in the card, used only on request."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from conftest import GLAS
from roiseg.cli import main
from roiseg.engine.inference import predict
from roiseg.engine.models import DEFAULT_MODELS_DIR, ModelCard, ModelRegistry, select_device

GLAS_MPP = 0.62


@pytest.fixture()
def unchecked_model(tmp_path):
    """The default model's files with a card that records no reduced precision."""
    directory = tmp_path / "model"
    shutil.copytree(DEFAULT_MODELS_DIR, directory)
    card = json.loads((directory / "model.json").read_text())
    card.pop("reduced_precision", None)
    (directory / "model.json").write_text(json.dumps(card))
    return directory


def _rgb(path, scale):
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def test_a_checked_precision_is_recorded_and_used_only_on_request(unchecked_model, tmp_path,
                                                                  capsys, one_torch_thread):
    card = ModelCard.from_file(unchecked_model / "model.json")
    images = tmp_path / "images"
    images.mkdir()
    for name in card.training_split.held_out[:2]:
        shutil.copy(GLAS / "images" / f"{name}.png", images)
    unrecorded = ModelRegistry([unchecked_model], select_device("cpu"), runtime="torch",
                               reduced_precision=True)
    assert unrecorded.load(unrecorded.card(card.id)).autocast is None

    assert main(["precision", "--models", str(unchecked_model), "--images", str(images),
                 "--mpp", str(GLAS_MPP), "--write"]) == 0
    assert "% of the pixels keep their class (2 held-out images" in capsys.readouterr().out
    checked = ModelCard.from_file(unchecked_model / "model.json").reduced_precision
    assert checked is not None and checked.dtype == "bfloat16" and checked.device == "cpu"
    assert 0.98 <= checked.pixel_agreement <= 1 and "2 held-out images" in checked.checked_on

    reduced = ModelRegistry([unchecked_model], select_device("cpu"), runtime="auto",
                            reduced_precision=True)
    model = reduced.load(reduced.card(card.id))
    assert model.autocast == torch.bfloat16 and model.onnx is None
    plain = ModelRegistry([unchecked_model], select_device("cpu"), runtime="torch")
    full_model = plain.load(plain.card(card.id))
    assert full_model.autocast is None
    image = _rgb(GLAS / "images" / f"{card.training_split.held_out[0]}.png", GLAS_MPP / card.mpp)
    full, low = predict(full_model, image), predict(model, image)
    assert np.mean(full.class_map == low.class_map) >= 0.98
    assert not np.array_equal(full.probability, low.probability)  # really another precision


@pytest.mark.parametrize("value, message", [
    ("bf16", "must be"),
    ({"dtype": "float8", "device": "cpu", "pixel_agreement": 0.9, "checked_on": "x"},
     "float8"),
    ({"dtype": "bfloat16", "device": "cpu", "pixel_agreement": 1.5, "checked_on": "x"},
     "0..1"),
])
def test_a_malformed_record_is_refused_by_name(unchecked_model, value, message):
    card = json.loads((unchecked_model / "model.json").read_text())
    card["reduced_precision"] = value
    (unchecked_model / "model.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=f"reduced_precision.*{message}"):
        ModelCard.from_file(unchecked_model / "model.json")
