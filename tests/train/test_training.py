"""Training module and ImageNet weights, on real GlaS images (fast: one CPU thread)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GLAS, REPO
from roiseg.cli import train as train_cli
from roiseg.engine.models import DEFAULT_MODELS_DIR, ModelCard, load_model
from roiseg.engine.pretrained import encoder_state, imagenet_normalization, load_imagenet_encoder
from roiseg.engine.training_split import TrainingSplit
from roiseg.errors import InvalidInput, NotFound
from roiseg.train import training as train

GLAS_MPP = 0.62


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def samples() -> list[train.Sample]:
    """Three real GlaS images at 1 µm/px with their gland labels."""
    mapping = train.parse_mask_values(None)
    pairs = train.find_pairs(GLAS / "images", GLAS / "masks")
    chosen = [p for p in pairs if p[0].stem in ("train_1", "train_2", "train_3")]
    return [train.load_sample(i, m, mapping, GLAS_MPP / 1.0) for i, m in chosen]


def _fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    """``steps`` AdamW steps on one batch; the loss before each step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = train.segmentation_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def _crops(samples, size: int, count: int, seed: int = 0):
    sampler = train.CropSampler(samples, size, 2, np.random.default_rng(seed), augment=False)
    return sampler.batch(count)


# ------------------------------------------------------------------ pretrained weights


@pytest.mark.parametrize("encoder, tensors, deep_shape", [
    ("mobilenet_v2", 312, (1, 1280, 4, 4)),
    ("tu-tf_efficientnet_lite0", 288, (1, 320, 4, 4)),
])
def test_imagenet_mapping_loads_every_tensor(samples, encoder, tensors, deep_shape):
    torch.manual_seed(0)
    model = train.build_model("Unet", encoder, 2)
    random_model = train.build_model("Unet", encoder, 2)
    random_model.load_state_dict(model.state_dict())
    load_imagenet_encoder(model, encoder)

    source = list(encoder_state(encoder).values())
    target = list(model.encoder.state_dict().values())
    assert len(source) == len(target) == tensors
    for src, dst in zip(source, target):
        assert src.shape == dst.shape
        assert torch.equal(src.to(dst.dtype), dst)
    # The decoder is untouched.
    for name, tensor in model.decoder.state_dict().items():
        assert torch.equal(tensor, random_model.decoder.state_dict()[name])

    # On a real H&E crop the ImageNet encoder computes other features than a random one.
    mean, std = imagenet_normalization(encoder)
    images, _ = _crops(samples, 128, 1)
    x = train.to_input(images, mean, std)
    model.eval()
    random_model.eval()
    with torch.no_grad():
        deep = model.encoder(x)[-1]
        deep_random = random_model.encoder(x)[-1]
    assert deep.shape == deep_random.shape == deep_shape
    assert (deep - deep_random).abs().mean() > 0.5 * deep_random.abs().mean()


def test_imagenet_normalization_follows_the_weights(tmp_path):
    # torchvision's weights were trained on ImageNet mean/std, TensorFlow's Lite models on
    # mean 0.5, std 0.5: a new model trains (and its card records) what its encoder's
    # weights expect; a fine-tuned model keeps its card's.
    imagenet = (train.IMAGENET_MEAN, train.IMAGENET_STD)
    assert imagenet_normalization("mobilenet_v2") == imagenet
    assert imagenet_normalization("tu-tf_efficientnet_lite0") == ((0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="tu-tf_efficientnet_lite0"):
        imagenet_normalization("resnet18")

    data = ("--images", str(GLAS / "images"), "--masks", str(GLAS / "masks"),
            "--source-mpp", "0.62", "--out", str(tmp_path))
    for extra, expected in [(("--encoder", "tu-tf_efficientnet_lite0"), ((0.5,) * 3, (0.5,) * 3)),
                            (("--encoder", "resnet18", "--no-pretrained"), imagenet),
                            ((), imagenet)]:
        config = train._Config.from_options(_options(*data, *extra))
        assert (config.card.mean, config.card.std) == expected
    default = _default_card()
    config = train._Config.from_options(_options(*data, "--init-model", str(default.card_path)))
    assert (config.card.mean, config.card.std) == (tuple(default.mean), tuple(default.std))


def test_a_fine_tuned_model_keeps_the_tile_plan_of_the_model_it_starts_from(tmp_path):
    """The larger tiles checked for the default model carry over to a model trained from it
    (the fast track), unless other tiles are asked for."""
    data = ("--images", str(GLAS / "images"), "--masks", str(GLAS / "masks"),
            "--source-mpp", "0.62", "--out", str(tmp_path))
    default = _default_card()
    assert default.max_tile_size is not None and default.max_tile_size > default.tile_size
    init = ("--init-model", str(default.card_path))
    assert train._Config.from_options(_options(*data, *init)).card.max_tile_size \
        == default.max_tile_size
    assert train._Config.from_options(
        _options(*data, *init, "--tile-size", "256")).card.max_tile_size is None
    assert train._Config.from_options(_options(*data)).card.max_tile_size is None


def test_unsupported_encoder_names_the_supported_ones():
    model = train.build_model("Unet", "resnet18", 2)
    with pytest.raises(ValueError, match="mobilenet_v2"):
        load_imagenet_encoder(model, "resnet18")


# ------------------------------------------------------------------ data


def test_mask_values_parse_and_default():
    mapping = train.parse_mask_values('0=Other tissue,255="Gland epithelium"')
    assert mapping.names == ("Other tissue", "Gland epithelium")
    assert dict(mapping.values) == {0: 0, 255: 1} and mapping.other is None
    merged = train.parse_mask_values("0=Other, 1=Tumour, 2=Other")
    assert merged.names == ("Other", "Tumour") and dict(merged.values) == {0: 0, 1: 1, 2: 0}
    binary = train.parse_mask_values(None)
    assert list(binary.lookup_table(255)[[0, 1, 255]]) == [0, 1, 1]
    with pytest.raises(InvalidInput):
        train.parse_mask_values("0=Other tissue")
    with pytest.raises(ValueError):
        train.parse_mask_values("0=Other tissue,x=Gland")


def test_samples_are_resampled_to_the_model_resolution(samples):
    sample = samples[0]
    assert sample.image.dtype == np.uint8 and sample.image.shape[2] == 3
    assert sample.image.shape[:2] == sample.labels.shape == (round(522 * GLAS_MPP),
                                                              round(775 * GLAS_MPP))
    assert set(np.unique(sample.labels)) == {0, 1}


def test_split_is_by_image_deterministic_and_seeded():
    names = [f"train_{i}" for i in range(1, 86)]
    train_idx, val_idx = train.split_by_image(names, 0.18, seed=0)
    assert len(val_idx) == 15 and len(train_idx) == 70
    assert not set(train_idx) & set(val_idx)
    # The split depends on the names, not on the order they are listed in.
    shuffled = list(reversed(names))
    assert sorted(shuffled[i] for i in train.split_by_image(shuffled, 0.18, seed=0)[1]) == \
        sorted(names[i] for i in val_idx)
    assert train.split_by_image(names, 0.18, seed=0) == (train_idx, val_idx)
    assert train.split_by_image(names, 0.18, seed=1)[1] != val_idx


def test_crops_are_class_balanced_and_augmented(samples):
    sampler = train.CropSampler(samples, 96, 2, np.random.default_rng(0))
    images, labels = sampler.batch(32)
    assert images.shape == (32, 96, 96, 3) and labels.shape == (32, 96, 96)
    # About half of the crops are centred on each class: both are well represented.
    centres = labels[:, 48, 48]
    assert 6 <= np.count_nonzero(centres == 1) <= 26


def _stripe_widths(labels: np.ndarray) -> list[float]:
    """Mean width of the label stripes crossed by each crop's middle row or column."""
    widths = []
    for crop in labels:
        middle = crop[crop.shape[0] // 2]
        if np.all(middle == middle[0]):  # rotated: the stripes run along the rows
            middle = crop[:, crop.shape[1] // 2]
        edges = np.flatnonzero(np.diff(middle.astype(int)))
        widths.append(float(np.mean(np.diff(edges))))
    return widths


def test_scale_jitter_resizes_the_tissue(samples):
    """Labels in 16 px stripes: crops keep 16 px without jitter, and show them from
    16 / 1.5 to 16 x 1.5 px wide with --scale-jitter 0.5."""
    image = samples[0].image
    stripes = ((np.arange(image.shape[1]) // 16) % 2).astype(np.uint8)
    striped = train.Sample("stripes", image, np.broadcast_to(stripes, image.shape[:2]).copy())
    plain = train.CropSampler([striped], 96, 2, np.random.default_rng(0))
    assert set(_stripe_widths(plain.batch(16)[1])) == {16.0}
    jittered = train.CropSampler([striped], 96, 2, np.random.default_rng(0), scale_jitter=0.5)
    widths = _stripe_widths(jittered.batch(64)[1])
    assert min(widths) < 13 and max(widths) > 20, widths
    assert 16 / 1.5 - 1 <= min(widths) and max(widths) <= 16 * 1.5 + 1, widths


# ------------------------------------------------------------------ training


def test_a_few_training_steps_lower_the_loss(samples):
    torch.manual_seed(0)
    model = train.build_model("Unet", "mobilenet_v2", 2, pretrained=True)
    model = model.to(memory_format=torch.channels_last).train()
    images, labels = _crops(samples, 64, 4)
    x, y = train.to_input(images), torch.from_numpy(labels).long()
    losses = _fit(model, x, y, steps=8)
    model.eval()
    with torch.no_grad():
        final = float(train.segmentation_loss(model(x), y))
    assert losses[-1] < 0.8 * losses[0], losses
    assert final < losses[0], (final, losses)


# ------------------------------------------------------------------ export


def _card_fields_from_docs() -> dict:
    text = (REPO / "docs" / "model-cards.md").read_text()
    return json.loads(re.search(r"```json\n(.*?)```", text, re.DOTALL).group(1))


def test_card_and_fp16_checkpoint_round_trip(tmp_path, samples):
    torch.manual_seed(0)
    model = train.build_model("Unet", "mobilenet_v2", 2, pretrained=True).eval()
    # The documented fields but those of another architecture (extra) and other files.
    documented = {k: v for k, v in _card_fields_from_docs().items()
                  if k not in ("extra", "ensemble")}
    card = dict(documented, id="round-trip", trained_on="a test", metrics={})
    written = train.export_model(model, tmp_path, card)

    on_disk = json.loads((tmp_path / "model.json").read_text())
    assert on_disk == written
    assert list(on_disk) == list(documented)  # the documented fields, in order
    assert on_disk["sha256"] == train.sha256_file(tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}

    fresh = train.build_model("Unet", "mobilenet_v2", 2)
    train.load_float_state_dict(fresh, tmp_path / "model.pt").eval()
    assert all(p.dtype == torch.float32 for p in fresh.parameters())
    images, _ = _crops(samples, 128, 2)
    x = train.to_input(images)
    with torch.no_grad():
        expected, actual = model(x), fresh(x)
    assert torch.allclose(actual, expected, rtol=0.02, atol=0.02 * expected.abs().max())
    assert (actual.argmax(1) == expected.argmax(1)).float().mean() > 0.99

    # The server accepts the card and loads the checkpoint to the same float32 model.
    loaded = load_model(ModelCard.from_file(tmp_path / "model.json"), torch.device("cpu"))
    assert torch.allclose(loaded.probabilities(images), actual.softmax(1), atol=1e-4)


def _three_images(tmp_path: Path) -> Path:
    """A data folder with real GlaS train_1..3 (images/ and masks/)."""
    data = tmp_path / "data"
    for kind in ("images", "masks"):
        (data / kind).mkdir(parents=True)
        for i in (1, 2, 3):
            (data / kind / f"train_{i}.png").symlink_to(GLAS / kind / f"train_{i}.png")
    return data


def test_roiseg_train_end_to_end(tmp_path):
    """The CLI entry point on 3 real images: a tiny budget, a complete model directory."""
    data = _three_images(tmp_path)
    out = tmp_path / "model"
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args([
        "--images", str(data / "images"), "--masks", str(data / "masks"),
        "--source-mpp", str(GLAS_MPP), "--val-fraction", "0.34", "--crop", "64",
        "--batch-size", "2", "--epochs", "2", "--steps-per-epoch", "2", "--threads", "1",
        "--no-progress", "--out", str(out), "--model-id", "tiny",
        "--keep-on-glass", "Gland epithelium"])
    assert train_cli.run(args) == 0
    card = json.loads((out / "model.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.pt"]
    assert card["id"] == "tiny" and card["sha256"] == train.sha256_file(out / "model.pt")
    assert [c["name"] for c in card["classes"]] == ["Other tissue", "Gland epithelium"]
    assert [c.get("keep_on_glass", False) for c in card["classes"]] == [False, True]
    assert card["mpp"] == 1.0 and card["tile_size"] == 512 and card["overlap"] == 128
    assert card["metrics"]["val_images"] == 1  # numbers, not their text
    assert isinstance(card["metrics"]["val_gland_dice"], float)
    assert 0.0 <= card["metrics"]["val_gland_dice"] <= 1.0
    assert "2 for training, 1 held out" in card["trained_on"]
    names = [f"train_{i}" for i in (1, 2, 3)]
    training, held_out = train.split_by_image(names, 0.34, 0)
    assert card["training_split"] == {"training": [names[i] for i in training],
                                      "held_out": [names[i] for i in held_out]}
    recorded = ModelCard.from_file(out / "model.json").training_split
    assert recorded is not None and len(recorded.held_out) == 1
    assert not set(recorded.training) & set(recorded.held_out)
    assert sorted(recorded.training + recorded.held_out) == names
    # Called in-process (not from a shell), the card holds an equivalent `roiseg train`.
    command = card["trained_on"].split("Command: ", 1)[1]
    assert command.startswith("roiseg train ") and "--crop 64" in command
    rebuilt = parser.parse_args(shlex.split(command)[2:])
    assert vars(rebuilt) == vars(args)
    load_model(ModelCard.from_file(out / "model.json"), torch.device("cpu"))


def test_the_weight_average_is_validated_and_exported(tmp_path):
    data = _three_images(tmp_path)
    out = tmp_path / "model"
    options = _options("--images", str(data / "images"), "--masks", str(data / "masks"),
                       "--source-mpp", str(GLAS_MPP), "--val-fraction", "0.34", "--crop", "64",
                       "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "4",
                       "--lr", "0.01", "--ema", "0.5", "--threads", "1", "--no-progress",
                       "--keep-state", "--out", str(out))
    assert train.train(options).card_path == (out / "model.json").resolve()
    state = torch.load(out / "train_state.pt", map_location="cpu", weights_only=True)
    exported = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in state["averaged"].items()
                if k.startswith("module.")}
    assert int(state["averaged"]["n_averaged"]) == 4
    assert exported.keys() == averaged.keys() == state["model"].keys()
    weights = [k for k, v in exported.items() if v.is_floating_point()]
    for key in weights:
        assert torch.equal(exported[key], averaged[key].to(exported[key].dtype)), key
    # The average is not the last step's weights.
    moved = sum(not torch.allclose(averaged[k].float(), state["model"][k].float(), atol=1e-3)
                for k in weights)
    assert moved > len(weights) // 4


def test_recorded_command_leaves_out_resume(tmp_path, monkeypatch):
    argv = ["--images", str(GLAS / "images"), "--masks", str(GLAS / "masks"),
            "--source-mpp", "0.62", "--ema", "0.99", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["roiseg", "train", *argv, "--resume"])
    assert train_cli.command_line(_args(*argv, "--resume")) == \
        shlex.join(["roiseg", "train", *argv])


def test_the_command_line_defaults_are_the_library_defaults(tmp_path):
    options = _options("--images", "images", "--masks", "masks", "--out", str(tmp_path))
    assert dataclasses.replace(options, command_line="") == train.TrainOptions(
        images=Path("images"), masks=Path("masks"), out=tmp_path)


def test_encoder_learns_at_its_own_rate(tmp_path):
    model = train.build_model("Unet", "mobilenet_v2", 2)
    encoder, rest = train._parameter_groups(model, 1e-3, 0.2)
    assert (encoder["base_lr"], rest["base_lr"]) == (pytest.approx(2e-4), 1e-3)
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.encoder.parameters()}
    assert len(encoder["params"]) + len(rest["params"]) == len(list(model.parameters()))
    with pytest.raises(InvalidInput, match="--encoder-lr-scale"):
        train._Config.from_options(_options(
            "--images", str(GLAS / "images"), "--masks", str(GLAS / "masks"),
            "--source-mpp", "0.62", "--encoder-lr-scale", "0", "--out", str(tmp_path)))


def test_keep_on_glass_names_a_class(tmp_path):
    with pytest.raises(InvalidInput, match="--keep-on-glass names unknown classes: Lumen"):
        train._Config.from_options(_options(
            "--images", str(GLAS / "images"), "--masks", str(GLAS / "masks"),
            "--source-mpp", "0.62", "--keep-on-glass", "Lumen", "--out", str(tmp_path)))


def test_resume_requires_matching_state(tmp_path):
    from roiseg.cli import main

    assert main(["train", "--images", str(GLAS / "images"), "--masks", str(GLAS / "masks"),
                 "--source-mpp", "0.62", "--out", str(tmp_path), "--resume"]) == 2  # no state


# ------------------------------------------------------------------ the shipped model


def test_default_model_card_and_checkpoint(monkeypatch):
    """The shipped card is complete, its training split is the one its own recorded command
    selects, and its validation figures are what the shipped checkpoint scores on the
    held-out images."""
    directory = DEFAULT_MODELS_DIR
    card = json.loads((directory / "model.json").read_text())
    assert list(card) == list(_card_fields_from_docs())
    assert card["id"] == "glas-unet-mobilenetv2" and card["version"] == "0.4.0"
    assert [(c["name"], c.get("keep_on_glass", False), c.get("catch_all", False))
            for c in card["classes"]] == \
        [("Other tissue", False, True), ("Gland epithelium", True, False)]
    # An ensemble of two models, all checkpoints together at most 25 MB.
    files = [card, *card["ensemble"]]
    assert len(files) == 2
    assert sum((directory / f["checkpoint"]).stat().st_size for f in files) <= 25e6
    assert all(f["sha256"] == train.sha256_file(directory / f["checkpoint"]) for f in files)
    assert "averaged with glas-unet-mobilenetv2@0.2.0" in card["trained_on"]

    command = shlex.split(card["trained_on"].split("Command: ", 1)[1])
    assert command[:3] == ["python", "-m", "roiseg.train"]
    # The split comes from the data options and the seed; the --ensemble-with model (the
    # first member's training run, named in trained_on) is not needed to rebuild it.
    partner = command.index("--ensemble-with")
    del command[partner:partner + 2]
    monkeypatch.chdir(REPO)  # the command's paths are relative to the repository
    config = train._Config.from_options(_options(*command[3:]))
    training, held_out = train._Trainer(config)._load_data()
    assert len(held_out) == int(card["metrics"]["val_images"])
    assert card["training_split"] == {"training": sorted(s.name for s in training),
                                      "held_out": sorted(s.name for s in held_out)}
    result = train.evaluate(load_model(ModelCard.from_file(directory / "model.json"),
                                       torch.device("cpu")), held_out)
    assert result["dice"][1] == pytest.approx(float(card["metrics"]["val_gland_dice"]),
                                              abs=1.5e-3)
    assert result["dice_image_mean"][1] == pytest.approx(
        float(card["metrics"]["val_gland_dice_image_mean"]), abs=1.5e-3)


# ------------------------------------------------------------------ QuPath GeoJSON input


def _qupath_geojson(mask_path: Path, path: Path, right_unannotated: bool = True) -> int:
    """A QuPath-style export of a GlaS mask: one "Gland epithelium" annotation per gland,
    then one "Other tissue" annotation (the rest, with the glands as holes) written after them,
    so that holes must be honoured; with ``right_unannotated`` only the left 60 % of the
    image is annotated."""
    import cv2
    import shapely
    from rasterio.features import shapes
    from shapely.geometry import box, mapping, shape

    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    height, width = mask.shape
    area = box(0, 0, width * (0.6 if right_unannotated else 1.0), height)
    glands = [shape(g).intersection(area)
              for g, v in shapes((mask == 255).astype(np.uint8), mask=mask == 255) if v == 1]
    glands = [g for g in glands if not g.is_empty]
    stroma = area.difference(shapely.union_all(glands))

    def feature(geometry, name):
        return {"type": "Feature", "id": f"{name}-{id(geometry)}",
                "geometry": mapping(geometry),
                "properties": {"objectType": "annotation",
                               "classification": {"name": name, "color": [200, 0, 0]}}}

    features = [feature(g, "Gland epithelium") for g in glands] + [feature(stroma, "Other tissue")]
    features.append({"type": "Feature", "geometry": mapping(box(1, 1, 5, 5)),
                     "properties": {"objectType": "annotation"}})  # unclassified: left out
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return sum(len(p.interiors) for p in getattr(stroma, "geoms", [stroma]))


@pytest.fixture(scope="module")
def annotated(tmp_path_factory) -> Path:
    """train_1..3 (symlinks) with QuPath GeoJSON annotations of their left 60 %."""
    root = tmp_path_factory.mktemp("annotated")
    (root / "images").mkdir()
    (root / "annotations").mkdir()
    holes = []
    for i in (1, 2, 3):
        (root / "images" / f"train_{i}.png").symlink_to(GLAS / "images" / f"train_{i}.png")
        holes.append(_qupath_geojson(GLAS / "masks" / f"train_{i}.png",
                                     root / "annotations" / f"train_{i}.geojson"))
    assert holes[2] >= 5  # train_3's Other tissue annotation has glands as holes
    return root


def test_geojson_annotations_are_rasterised_with_holes_and_ignored_pixels(annotated, samples):
    from roiseg.train import data as training_data

    pairs = training_data.find_annotated(annotated / "images", annotated / "annotations")
    assert [p[0].stem for p in pairs] == ["train_1", "train_2", "train_3"]
    assert training_data.annotation_class_names(p for _, p in pairs) == \
        ["Gland epithelium", "Other tissue"]
    classes = ["Other tissue", "Gland epithelium"]
    sample = training_data.load_annotated_sample(*pairs[2], classes, mpp=1.0,
                                                 source_mpp=GLAS_MPP)
    reference = samples[2]  # the same image from its mask at 1 µm/px
    # Read: the annotations' bounding box (the left 60 %) plus a 64 px margin.
    height, width = sample.labels.shape
    assert height == reference.labels.shape[0]
    assert abs(width - (0.6 * 775 * GLAS_MPP + 64)) <= 1.5
    left, right = slice(0, round(0.6 * 775 * GLAS_MPP) - 2), \
        slice(round(0.6 * 775 * GLAS_MPP) + 2, width)
    # (The same pixels, resampled from a slightly different grid: a little blur at most.)
    assert np.abs(sample.image[:, left].astype(int) - reference.image[:, left]).mean() < 4
    # Annotated: the mask's classes (the glands inside the Other tissue holes stay glands).
    ref_left = reference.labels[:, left]
    assert (sample.labels[:, left] == ref_left).mean() > 0.97
    glands = np.count_nonzero(ref_left == 1)
    assert glands > 1000
    assert np.count_nonzero((sample.labels[:, left] == 1) & (ref_left == 1)) > 0.95 * glands
    # Not annotated: ignored, or the --unannotated class.
    assert (sample.labels[:, right] == train.IGNORE_INDEX).all()
    filled = training_data.load_annotated_sample(*pairs[2], classes, mpp=1.0,
                                                 source_mpp=GLAS_MPP, unannotated=0)
    assert (filled.labels[:, right] == 0).all()


def test_ignored_pixels_do_not_reach_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 32, 32, requires_grad=True)
    target = torch.randint(0, 2, (2, 32, 32))
    target[:, :, 16:] = train.IGNORE_INDEX
    loss = train.segmentation_loss(logits, target)
    loss.backward()
    assert logits.grad[..., 16:].abs().max() == 0 and logits.grad[..., :16].abs().max() > 0
    changed = logits.detach().clone()
    changed[..., 16:] = torch.randn_like(changed[..., 16:]) * 10
    assert torch.allclose(train.segmentation_loss(changed, target), loss.detach())
    # A batch without any labelled pixel gives a zero loss, not NaN.
    empty = train.segmentation_loss(logits, torch.full_like(target, train.IGNORE_INDEX))
    assert float(empty.detach()) == 0.0


def test_training_on_geojson_annotations_lowers_the_loss(annotated):
    from roiseg.train import data as training_data

    pairs = training_data.find_annotated(annotated / "images", annotated / "annotations")
    data = [training_data.load_annotated_sample(i, g, ["Other tissue", "Gland epithelium"], 1.0,
                                                GLAS_MPP) for i, g in pairs]
    # The right edge of each annotated area (half of it the unannotated margin) and its left.
    crops = [(s.image[96:224, x:x + 128], s.labels[96:224, x:x + 128])
             for s in data for x in (0, s.labels.shape[1] - 128)]
    images, labels = np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops])
    assert 0.2 < (labels == train.IGNORE_INDEX).mean() < 0.4
    assert set(np.unique(labels)) == {0, 1, train.IGNORE_INDEX}
    torch.manual_seed(0)
    model = train.build_model("Unet", "mobilenet_v2", 2, pretrained=True).train()
    x, y = train.to_input(images), torch.from_numpy(labels).long()
    losses = _fit(model, x, y, steps=3)
    assert losses[-1] < losses[0], losses


# ------------------------------------------------------------------ fine-tuning


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def _options(*argv: str) -> train.TrainOptions:
    return train_cli.train_options(_args(*argv))


def _default_card() -> ModelCard:
    return ModelCard.from_file(DEFAULT_MODELS_DIR / "model.json")


def test_fine_tuning_starts_from_the_default_model(tmp_path, samples):
    options = _options("--images", str(GLAS / "images"), "--masks", str(GLAS / "masks"),
                       "--source-mpp", str(GLAS_MPP), "--init-model", "glas-unet-mobilenetv2",
                       "--out", str(tmp_path))
    config = train._Config.from_options(options)
    card, trained = _default_card(), config.card
    # The fine-tuned model's settings are the defaults.
    assert (trained.architecture, trained.encoder, trained.mpp, trained.tile_size,
            trained.overlap) == (card.architecture, card.encoder, card.mpp, card.tile_size,
                                 card.overlap)
    assert [c.name for c in trained.classes] == [c.name for c in card.classes]
    assert [c.keep_on_glass for c in trained.classes] == [c.keep_on_glass for c in card.classes]
    assert tuple(trained.mean) == card.mean and tuple(trained.std) == card.std
    model = train._Trainer(config)._model().eval()
    # Its first training step sees exactly the default model's outputs on a real crop (of
    # an ensemble, the card's own model's).
    images, _ = _crops(samples, 128, 2)
    expected = load_model(dataclasses.replace(card, ensemble=()),
                          torch.device("cpu")).probabilities(images)
    with torch.no_grad():
        actual = model(train.to_input(images, trained.mean, trained.std)).softmax(1)
    assert torch.allclose(actual, expected, atol=1e-5)


def test_ensemble_with_a_registered_model(tmp_path):
    """A new model trained alongside the default one: the card is the ensemble's."""
    data = _three_images(tmp_path)
    out = tmp_path / "model"
    default = _default_card()
    options = _options("--images", str(data / "images"), "--masks", str(data / "masks"),
                       "--source-mpp", str(GLAS_MPP), "--val-fraction", "0.34", "--crop", "64",
                       "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2",
                       "--threads", "1", "--no-progress", "--extra",
                       '{"decoder_channels": [32, 16, 8, 8, 4]}', "--ensemble-with",
                       str(default.card_path), "--out", str(out))
    assert train.train(options).card_path == (out / "model.json").resolve()
    card = ModelCard.from_file(out / "model.json")
    partner_checkpoints = [default.checkpoint, *(m.checkpoint for m in default.ensemble)]
    assert [m.checkpoint.name for m in card.ensemble] == [
        f"model.member{i}.pt" for i in range(1, len(partner_checkpoints) + 1)]
    for member, original in zip(card.ensemble, partner_checkpoints):
        copied = torch.load(member.checkpoint, weights_only=True)
        source = torch.load(original, weights_only=True)
        assert copied.keys() == source.keys()
        assert all(torch.equal(copied[k], source[k]) for k in source)
    assert card.extra == {"decoder_channels": [32, 16, 8, 8, 4]}
    assert f"averaged with {default.id}@{default.version} ({default.sha256})" in card.trained_on

    # The card's figures are the ensemble's: 2 steps leave the new model near chance, the
    # ensemble segments the held-out image as well as the default model does.
    samples = [train.load_sample(image, mask, train.parse_mask_values(None), GLAS_MPP)
               for image, mask in train.find_pairs(data / "images", data / "masks")]
    train_idx, val_idx = train.split_by_image([s.name for s in samples], 0.34, 0)
    held_out = [samples[i] for i in val_idx]
    # The card records the split of this run.
    assert card.training_split == TrainingSplit.of(
        (samples[i].name for i in train_idx), (s.name for s in held_out))
    cpu = torch.device("cpu")
    alone = train.evaluate(load_model(dataclasses.replace(card, ensemble=()), cpu), held_out)
    together = train.evaluate(load_model(card, cpu), held_out)
    assert float(card.metrics["val_gland_dice"]) == pytest.approx(together["dice"][1], abs=1e-3)
    assert together["dice"][1] > alone["dice"][1] + 0.1
    assert together["dice"][1] > 0.8


def test_ensemble_partners_must_match(tmp_path):
    data = ("--images", str(GLAS / "images"), "--masks", str(GLAS / "masks"),
            "--source-mpp", "0.62", "--ensemble-with", "glas-unet-mobilenetv2",
            "--out", str(tmp_path))
    with pytest.raises(InvalidInput, match=r"--ensemble-with glas-unet-mobilenetv2: it runs "
                                         r"at 1 µm/px, not 0\.5"):
        train._Config.from_options(_options(*data, "--mpp", "0.5"))
    with pytest.raises(InvalidInput, match="its classes are Other tissue, Gland epithelium, not "
                                         "Other, Gland"):
        train._Config.from_options(_options(*data, "--mask-values", "0=Other,255=Gland"))
    with pytest.raises(InvalidInput, match="its normalisation"):
        train._Config.from_options(_options(*data, "--encoder", "tu-tf_efficientnet_lite0"))
    with pytest.raises(NotFound, match="--ensemble-with 'nope': no such model card or id"):
        train._Config.from_options(_options(*data[:-4], "--ensemble-with", "nope",
                                      "--out", str(tmp_path)))


def test_other_classes_reinitialise_only_the_head(tmp_path, annotated, capsys):
    options = _options("--images", str(annotated / "images"), "--annotations",
                       str(annotated / "annotations"), "--source-mpp", str(GLAS_MPP),
                       "--classes", "Other tissue,Gland epithelium,Lumen",
                       "--init-model", str(DEFAULT_MODELS_DIR / "model.json"),
                       "--out", str(tmp_path))
    config = train._Config.from_options(options)
    torch.manual_seed(0)
    model = train._Trainer(config)._model()
    assert "segmentation head is re-initialised for 3 classes" in capsys.readouterr().err
    default = load_model(dataclasses.replace(_default_card(), ensemble=()),
                         torch.device("cpu")).module.state_dict()
    state = model.state_dict()
    head = [k for k in state if k.startswith("segmentation_head.")]
    assert head and state[head[0]].shape[0] == 3
    for key, tensor in state.items():
        if key.startswith("segmentation_head."):
            assert tensor.shape != default[key].shape or not torch.equal(tensor, default[key])
        else:
            assert torch.equal(tensor, default[key].to(tensor.dtype)), key
    # Classes the fine-tuned model lacks are refused unless --classes names them.
    other = tmp_path / "other"
    other.mkdir()
    text = (annotated / "annotations" / "train_1.geojson").read_text()
    (other / "train_1.geojson").write_text(text.replace('"Other tissue"', '"Lumen"'))
    with pytest.raises(InvalidInput, match="Lumen.*--classes"):
        train._Config.from_options(_options(
            "--images", str(annotated / "images"), "--annotations", str(other),
            "--source-mpp", str(GLAS_MPP), "--init-model", "glas-unet-mobilenetv2",
            "--out", str(tmp_path)))


def test_fine_tuned_card_loads_in_the_server_and_segments(tmp_path, annotated):
    """`roiseg train --annotations --init-model` end to end; the server runs the result."""
    from roiseg.client.connection import InProcessClient, encode_png, pixels_source, segment_request
    from roiseg.engine.models import ModelRegistry
    from roiseg.server.service import SegmentationService
    from shapely.geometry import box

    out = tmp_path / "model"
    options = _options("--images", str(annotated / "images"), "--annotations",
                       str(annotated / "annotations"), "--source-mpp", str(GLAS_MPP),
                       "--init-model", "glas-unet-mobilenetv2", "--val-fraction", "0.34",
                       "--crop", "64", "--batch-size", "2", "--epochs", "1",
                       "--steps-per-epoch", "2", "--lr", "1e-5", "--threads", "1",
                       "--no-progress", "--out", str(out), "--model-id", "glas-finetuned")
    assert train.train(options).card_path == (out / "model.json").resolve()
    card = json.loads((out / "model.json").read_text())
    default = _default_card()
    assert f"fine_tuned_from: {default.id}@{default.version} ({default.sha256})" \
        in card["trained_on"]
    assert [c["name"] for c in card["classes"]] == ["Other tissue", "Gland epithelium"]
    assert card["mpp"] == default.mpp and card["metrics"]["val_images"] == 1
    # Nearly the default model after 2 steps at a tiny learning rate: a good gland Dice on
    # the held-out image's annotated part.
    assert float(card["metrics"]["val_gland_dice"]) > 0.8

    registry = ModelRegistry([out], torch.device("cpu"))
    assert registry.default_id == "glas-finetuned"
    import cv2
    image = cv2.cvtColor(cv2.imread(str(GLAS / "images" / "train_4.png")), cv2.COLOR_BGR2RGB)
    source = pixels_source(encoded=encode_png(image), downsample=1, origin_x=0, origin_y=0,
                           pixel_size_um=GLAS_MPP, image_width=image.shape[1],
                           image_height=image.shape[0])
    with InProcessClient(SegmentationService(registry)) as client:
        result = client.segment(segment_request(box(0, 0, 500, 400), source))
    features = result.feature_collections["glas-finetuned"]["features"]
    names = {f["properties"]["classification"]["name"] for f in features}
    assert "Gland epithelium" in names


def test_slide_annotations_read_only_the_annotated_area(tmp_path):
    """An SVS with QuPath annotations: its own calibration, the bbox at the model's mpp."""
    from conftest import CMU, CMU_MPP
    from roiseg.train import data as training_data
    from shapely.geometry import Point, box, mapping

    outer = box(1000, 1200, 1600, 1700).difference(Point(1300, 1450).buffer(100))
    features = [{"type": "Feature", "geometry": mapping(outer),
                 "properties": {"classification": {"name": "Tumor"}}},
                {"type": "Feature", "geometry": mapping(Point(1300, 1450).buffer(60)),
                 "properties": {"classification": {"name": "Other tissue"}}}]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / CMU.name).symlink_to(CMU)
    (tmp_path / f"{CMU.stem}.geojson").write_text(json.dumps(features))  # a plain list
    pairs = training_data.find_annotated(tmp_path / "images", tmp_path)
    sample = training_data.load_annotated_sample(*pairs[0], ["Other tissue", "Tumor"], mpp=2.0,
                                                 margin_px=10)
    height, width = sample.labels.shape
    assert abs(width - (600 * CMU_MPP / 2 + 20)) <= 2
    assert abs(height - (500 * CMU_MPP / 2 + 20)) <= 2
    counts = {v: np.count_nonzero(sample.labels == v) for v in (0, 1, train.IGNORE_INDEX)}
    scale = (CMU_MPP / 2) ** 2
    assert abs(counts[0] - np.pi * 60 ** 2 * scale) < 0.1 * np.pi * 60 ** 2 * scale
    assert abs(counts[1] - outer.area * scale) < 0.05 * outer.area * scale
    # The margin and the ring between the two annotations (the Tumor hole) are ignored.
    ring = (np.pi * (100 ** 2 - 60 ** 2)) * scale
    margin = height * width - (500 * CMU_MPP / 2) * (600 * CMU_MPP / 2)
    assert abs(counts[train.IGNORE_INDEX] - (margin + ring)) < 0.1 * (margin + ring)


def test_validation_dice_is_evaluates_dice_nan_for_an_absent_class():
    """One Dice definition: a class absent from prediction and reference of an image is left
    out of the per-image mean (NaN, as `roiseg evaluate` reports it), not counted as 1."""
    from roiseg.evaluation.metrics import class_dice
    from roiseg.train.data import Sample

    card = train.in_memory_card(train.class_specs(["Other tissue", "Gland epithelium", "Mucin"]))

    class Constant(torch.nn.Module):  # predicts class 1 on the left half, 0 elsewhere
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 3, *x.shape[2:])
            logits[:, 1, :, : x.shape[3] // 2] = 5
            logits[:, 0, :, x.shape[3] // 2:] = 5
            return logits

    model = train.LoadedModel(card, Constant(), torch.device("cpu"))
    image = np.full((64, 64, 3), 200, np.uint8)
    labels = np.zeros((64, 64), np.uint8)
    labels[:, :24] = 1  # glands on the left 24 columns; no mucin anywhere
    result = train.evaluate(model, [Sample("a", image, labels)])
    predicted = np.zeros((64, 64), np.int64)
    predicted[:, :32] = 1
    cm = np.bincount(labels.ravel().astype(np.int64) * 3 + predicted.ravel(),
                     minlength=9).reshape(3, 3)
    expected = class_dice(cm)
    assert result["dice"][:2] == pytest.approx(expected[:2].tolist())
    assert math.isnan(result["dice"][2]) and math.isnan(result["dice_image_mean"][2])
    assert result["dice_image_mean"][1] == pytest.approx(expected[1])
    assert result["score"] == pytest.approx(expected[1])  # the absent class does not count


def test_the_progress_bar_never_shows_a_best_dice_that_was_not_measured():
    from roiseg.train.training import _best_text, _Progress

    progress = _Progress()
    assert _best_text(progress, validated=True) == "n/a"  # before the first validation
    progress.best_score, progress.best_epoch = 0.9168, 1
    assert _best_text(progress, validated=True) == "0.917"
    assert _best_text(progress, validated=False) == "n/a"  # no validation set
