"""Training module and ImageNet weights, on real GlaS images (fast: one CPU thread)."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import GLAS, REPO
from roiseg import train
from roiseg.models import ModelCard, load_model
from roiseg.pretrained import load_imagenet_encoder, mobilenet_v2_weights_path

GLAS_MPP = 0.62


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def samples() -> list[train.Sample]:
    """Three real GlaS images at 1 µm/px with their gland labels."""
    mapping = train.parse_mask_values(None)
    pairs = train.find_pairs(GLAS / "images", GLAS / "masks")
    chosen = [p for p in pairs if p[0].stem in ("train_1", "train_2", "train_3")]
    return [train.load_sample(i, m, mapping, GLAS_MPP / 1.0) for i, m in chosen]


def _crops(samples, size: int, count: int, seed: int = 0):
    sampler = train.CropSampler(samples, size, 2, np.random.default_rng(seed), augment=False)
    return sampler.batch(count)


# ------------------------------------------------------------------ pretrained weights


def test_mobilenet_v2_mapping_loads_every_tensor(samples):
    torch.manual_seed(0)
    model = train.build_model("Unet", "mobilenet_v2", 2)
    random_model = train.build_model("Unet", "mobilenet_v2", 2)
    random_model.load_state_dict(model.state_dict())
    load_imagenet_encoder(model, "mobilenet_v2")

    source = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    source = [v for k, v in source.items() if k.startswith("features.")]
    target = list(model.encoder.state_dict().values())
    assert len(source) == len(target) == 312
    for src, dst in zip(source, target):
        assert src.shape == dst.shape
        assert torch.equal(src.to(dst.dtype), dst)
    # The decoder is untouched.
    for name, tensor in model.decoder.state_dict().items():
        assert torch.equal(tensor, random_model.decoder.state_dict()[name])

    # On a real H&E crop the ImageNet encoder computes other features than a random one.
    images, _ = _crops(samples, 128, 1)
    x = train.to_input(images)
    model.eval()
    random_model.eval()
    with torch.no_grad():
        deep = model.encoder(x)[-1]
        deep_random = random_model.encoder(x)[-1]
    assert deep.shape == deep_random.shape == (1, 1280, 4, 4)
    assert (deep - deep_random).abs().mean() > 0.5 * deep_random.abs().mean()


def test_unsupported_encoder_names_the_supported_ones():
    model = train.build_model("Unet", "resnet18", 2)
    with pytest.raises(ValueError, match="mobilenet_v2"):
        load_imagenet_encoder(model, "resnet18")


# ------------------------------------------------------------------ data


def test_mask_values_parse_and_default():
    mapping = train.parse_mask_values('0=Stroma,255="Gland epithelium"')
    assert mapping.names == ("Stroma", "Gland epithelium")
    assert dict(mapping.values) == {0: 0, 255: 1} and mapping.other is None
    merged = train.parse_mask_values("0=Other, 1=Tumour, 2=Other")
    assert merged.names == ("Other", "Tumour") and dict(merged.values) == {0: 0, 1: 1, 2: 0}
    binary = train.parse_mask_values(None)
    assert list(binary.lookup_table(255)[[0, 1, 255]]) == [0, 1, 1]
    with pytest.raises(ValueError):
        train.parse_mask_values("0=Stroma")
    with pytest.raises(ValueError):
        train.parse_mask_values("0=Stroma,x=Gland")


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


# ------------------------------------------------------------------ training


def test_a_few_training_steps_lower_the_loss(samples):
    torch.manual_seed(0)
    model = train.build_model("Unet", "mobilenet_v2", 2, pretrained=True)
    model = model.to(memory_format=torch.channels_last).train()
    images, labels = _crops(samples, 64, 4)
    x, y = train.to_input(images), torch.from_numpy(labels).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = train.segmentation_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        final = float(train.segmentation_loss(model(x), y))
    assert losses[-1] < 0.8 * losses[0], losses
    assert final < losses[0], (final, losses)


# ------------------------------------------------------------------ export


def _card_fields_from_docs() -> dict:
    text = (REPO / "docs" / "model-cards.md").read_text()
    return json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))


def test_card_and_fp16_checkpoint_round_trip(tmp_path, samples):
    torch.manual_seed(0)
    model = train.build_model("Unet", "mobilenet_v2", 2, pretrained=True).eval()
    documented = _card_fields_from_docs()
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


def test_roiseg_train_end_to_end(tmp_path):
    """The CLI entry point on 3 real images: a tiny budget, a complete model directory."""
    data = tmp_path / "data"
    for kind in ("images", "masks"):
        (data / kind).mkdir(parents=True)
        for i in (1, 2, 3):
            (data / kind / f"train_{i}.png").symlink_to(GLAS / kind / f"train_{i}.png")
    out = tmp_path / "model"
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args([
        "--images", str(data / "images"), "--masks", str(data / "masks"),
        "--source-mpp", str(GLAS_MPP), "--val-fraction", "0.34", "--crop", "64",
        "--batch-size", "2", "--epochs", "2", "--steps-per-epoch", "2", "--threads", "1",
        "--no-progress", "--out", str(out), "--model-id", "tiny"])
    assert train.run(args) == 0
    card = json.loads((out / "model.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.pt"]
    assert card["id"] == "tiny" and card["sha256"] == train.sha256_file(out / "model.pt")
    assert [c["name"] for c in card["classes"]] == ["Stroma", "Gland epithelium"]
    assert card["mpp"] == 1.0 and card["tile_size"] == 512 and card["overlap"] == 128
    assert card["metrics"]["val_images"] == "1"
    assert 0.0 <= float(card["metrics"]["val_gland_dice"]) <= 1.0
    assert "2 for training, 1 held out" in card["trained_on"]
    # Called in-process (not from a shell), the card holds an equivalent `roiseg train`.
    command = card["trained_on"].split("Command: ", 1)[1]
    assert command.startswith("roiseg train ") and "--crop 64" in command
    rebuilt = parser.parse_args(shlex.split(command)[2:])
    assert vars(rebuilt) == vars(args)
    load_model(ModelCard.from_file(out / "model.json"), torch.device("cpu"))


def test_resume_requires_matching_state(tmp_path):
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--images", str(GLAS / "images"), "--masks", str(GLAS / "masks"),
                              "--source-mpp", "0.62", "--out", str(tmp_path), "--resume"])
    assert train.run(args) == 2  # no state to resume from


# ------------------------------------------------------------------ the shipped model


def test_default_model_card_and_checkpoint():
    directory = Path(train.__file__).parent / "default_model"
    card = json.loads((directory / "model.json").read_text())
    assert list(card) == list(_card_fields_from_docs())
    assert card["id"] == "glas-unet-mobilenetv2" and card["version"] == "0.1.0"
    assert [c["name"] for c in card["classes"]] == ["Stroma", "Gland epithelium"]
    checkpoint = directory / card["checkpoint"]
    assert checkpoint.stat().st_size <= 15 * 2**20
    assert card["sha256"] == train.sha256_file(checkpoint)
    assert float(card["metrics"]["val_gland_dice"]) >= 0.8
    assert "Command: " in card["trained_on"]
