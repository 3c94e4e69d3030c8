"""Model cards, checkpoint loading and the model registry, with small real checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from roiseg.engine.models import (
    ClassSpec,
    ModelCard,
    ModelRegistry,
    load_model,
    select_device,
    sha256_file,
)
from roiseg.engine.training_split import TrainingSplit
from roiseg.errors import FailedPrecondition, InvalidInput, NotFound

CPU = torch.device("cpu")
#: A small SMP model: the `extra` kwargs shrink it to a few hundred thousand weights.
ARCH, ENCODER = "Unet", "resnet18"
EXTRA = {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
CLASSES = [{"index": 0, "name": "Stroma", "color": [150, 200, 150]},
           {"index": 1, "name": "Tumor", "color": [200, 0, 0]},
           {"index": 2, "name": "Glass", "color": [255, 255, 255]}]


pytestmark = pytest.mark.usefixtures("one_torch_thread")

def _smp_model(classes: int = len(CLASSES)) -> torch.nn.Module:
    torch.manual_seed(0)
    model = smp.create_model(ARCH, encoder_name=ENCODER, encoder_weights=None,
                             classes=classes, **EXTRA).eval()
    for module in model.modules():  # non-trivial batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model


def _write_model(directory: Path, weights: object, /, **fields) -> Path:
    """Save `weights` (a state-dict-like object or a TorchScript module) and a card
    for it in `directory`; `fields` override the card's fields (None removes one)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "weights.pt"
    if isinstance(weights, torch.jit.ScriptModule):
        weights.save(str(path))
    else:
        torch.save(weights, path)
    card = {
        "id": directory.name, "name": f"Model {directory.name}", "description": "test model",
        "version": "1.0.0", "format": "state_dict", "architecture": ARCH, "encoder": ENCODER,
        "checkpoint": path.name, "sha256": sha256_file(path), "mpp": 1.0, "tile_size": 64,
        "overlap": 16, "batch_size": 2,
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "classes": CLASSES, "background_class": "Glass", "tumor_class": "Tumor",
        "trained_on": "nothing; random weights", "metrics": {"val_dice": "0.5", "epochs": 3},
        "extra": EXTRA,
    }
    card.update(fields)
    card = {key: value for key, value in card.items() if value is not None}
    (directory / "model.json").write_text(json.dumps(card))
    return directory / "model.json"


def _expected_probabilities(model: torch.nn.Module, pixels: np.ndarray,
                            card: ModelCard) -> torch.Tensor:
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(card.mean).view(1, 3, 1, 1)) / torch.tensor(card.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).softmax(dim=1)


@pytest.fixture(scope="module")
def smp_model() -> torch.nn.Module:
    return _smp_model()


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)


def test_card_fields(tmp_path, smp_model):
    shuffled = [CLASSES[2], CLASSES[0], CLASSES[1]]
    path = _write_model(tmp_path / "m", smp_model.state_dict(), classes=shuffled,
                        sha256="AB" * 32, description=None)
    card = ModelCard.from_file(path)
    assert card.sha256 == "ab" * 32  # cards are read without hashing the checkpoint
    assert card.id == "m" and card.format == "state_dict" and card.card_path == path.resolve()
    assert card.checkpoint == (tmp_path / "m" / "weights.pt").resolve()
    assert card.classes == (ClassSpec(0, "Stroma", (150, 200, 150)),
                            ClassSpec(1, "Tumor", (200, 0, 0)),
                            ClassSpec(2, "Glass", (255, 255, 255)))
    assert card.mean == (0.485, 0.456, 0.406) and card.std == (0.229, 0.224, 0.225)
    assert card.background_index == 2 and card.tumor_index == 1
    assert card.kept_on_glass == () and card.catch_all_classes == ()  # optional flags
    assert card.description == "" and card.metrics == {"val_dice": "0.5", "epochs": 3}
    assert card.extra == EXTRA
    assert card.training_split is None and card.max_tile_size is None  # optional
    assert card.class_named("Tumor").index == 1
    with pytest.raises(InvalidInput, match="'Stroma', 'Tumor', 'Glass'"):
        card.class_named("Necrosis")


@pytest.mark.parametrize("fields, field, message", [
    ({"id": "bad id!"}, "id", "letters, digits"),
    ({"name": ""}, "name", "must not be empty"),
    ({"format": "onnx"}, "format", "not one of"),
    ({"architecture": "UNet3000"}, "architecture", "not a segmentation_models_pytorch"),
    ({"encoder": "resnet19"}, "encoder", "not a segmentation_models_pytorch"),
    ({"checkpoint": "missing.pt"}, "checkpoint", "does not exist"),
    ({"sha256": "abc"}, "sha256", "64 hexadecimal"),
    ({"mpp": 0}, "mpp", "> 0"),
    ({"mpp": "1.0"}, "mpp", "finite number"),
    ({"tile_size": 500}, "tile_size", "multiple of 32"),
    ({"tile_size": 512.0}, "tile_size", "integer"),
    ({"max_tile_size": 100}, "max_tile_size", "multiple of 32"),
    ({"max_tile_size": 32}, "max_tile_size", ">= 64"),
    ({"max_tile_size": 128.0}, "max_tile_size", "integer"),
    ({"overlap": 32}, "overlap", "less than half"),
    ({"overlap": -1}, "overlap", ">= 0"),
    ({"batch_size": 0}, "batch_size", ">= 1"),
    ({"normalization": {"mean": [0.5, 0.5], "std": [1, 1, 1]}}, "normalization.mean", "3 numbers"),
    ({"normalization": {"mean": [0, 0, 0], "std": [1, 0, 1]}}, "normalization.std", "> 0"),
    ({"classes": CLASSES[:1]}, "classes", "2 to 254"),
    ({"classes": [CLASSES[0], {**CLASSES[1], "index": 2}]}, "classes", "indexes must be 0..1"),
    ({"classes": [CLASSES[0], {**CLASSES[1], "name": "Stroma"}]}, "classes", "duplicate"),
    ({"classes": [CLASSES[0], {**CLASSES[1], "color": [0, 0, 300]}]}, "classes[1].color",
     "0..255"),
    ({"classes": [CLASSES[0], {"index": 1, "name": "x"}]}, "classes[1]", '"color"'),
    ({"classes": [CLASSES[0], {**CLASSES[1], "keep_on_glass": "yes"}]},
     "classes[1].keep_on_glass", "true or false"),
    ({"classes": [{**CLASSES[0], "catch_all": 1}, CLASSES[1]]}, "classes[0].catch_all",
     "true or false"),
    ({"classes": [CLASSES[0], {**CLASSES[1], "keep_in_glass": True}]}, "classes[1]",
     '"keep_on_glass"'),
    ({"background_class": "Fat"}, "background_class", "not one of the classes"),
    ({"tumor_class": "Tumour"}, "tumor_class", "not one of the classes"),
    ({"tumor_class": "Glass"}, "tumor_class", "differ from background_class"),
    ({"metrics": {"dice": [1]}}, "metrics.dice", "string or number"),
    ({"extra": [1]}, "extra", "JSON object"),
    ({"extra": {"classes": 4}}, "extra", "must not set classes"),
    ({"training_split": ["a"]}, "training_split", '{"training": [names], "held_out"'),
    ({"training_split": {"training": ["a"], "held_out": "b"}}, "training_split",
     "'held_out' must be a list of image names"),
    ({"training_split": {"training": ["a", ""], "held_out": []}}, "training_split",
     "'training' must be a list of image names"),
    ({"training_split": {"training": ["a", "b"], "held_out": ["a"]}}, "training_split",
     "listed twice: a"),
])
def test_card_errors_name_the_file_and_field(tmp_path, fields, field, message):
    path = _write_model(tmp_path / "m", {"w": torch.zeros(1)}, **fields)
    with pytest.raises(ValueError) as error:
        ModelCard.from_file(path)
    text = str(error.value)
    assert str(path.resolve()) in text and f"field '{field}'" in text and message in text


@pytest.mark.parametrize("fields, message", [
    ({"sha256": None}, "missing required field(s): 'sha256'"),
    ({"tumour_class": "Tumor"}, "unknown field(s): 'tumour_class'"),
])
def test_card_missing_and_unknown_fields(tmp_path, fields, message):
    path = _write_model(tmp_path / "m", {"w": torch.zeros(1)}, **fields)
    with pytest.raises(ValueError, match=r"model\.json: " + message.replace("(", r"\(")
                       .replace(")", r"\)")):
        ModelCard.from_file(path)


def test_training_split(tmp_path):
    split = {"training": ["b", "a.ome", "c"], "held_out": ["d"]}
    card = ModelCard.from_file(_write_model(tmp_path / "m", {"w": torch.zeros(1)},
                                            training_split=split))
    assert card.training_split == TrainingSplit(("a.ome", "b", "c"), ("d",))
    assert card.training_split.to_json() == {"training": ["a.ome", "b", "c"], "held_out": ["d"]}


def test_keep_on_glass(tmp_path, smp_model):
    classes = [CLASSES[0], {**CLASSES[1], "keep_on_glass": True},
               {**CLASSES[2], "keep_on_glass": False}]
    card = ModelCard.from_file(_write_model(tmp_path / "m", smp_model.state_dict(),
                                            classes=classes))
    assert [spec.keep_on_glass for spec in card.classes] == [False, True, False]
    assert card.kept_on_glass == (1,)


def test_unreadable_card(tmp_path):
    path = tmp_path / "model.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the model card"):
        ModelCard.from_file(path)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 7},
    lambda sd: {"model_state_dict": {f"model.{k}": v for k, v in sd.items()}},
    lambda sd: {"model": {f"module.model.{k}": v for k, v in sd.items()}},
], ids=["plain", "state_dict+module.", "model_state_dict+model.", "model+module.model."])
def test_state_dict_checkpoints_load(tmp_path, smp_model, pixels, wrap):
    card = ModelCard.from_file(_write_model(tmp_path / "m", wrap(smp_model.state_dict())))
    loaded = load_model(card, CPU)
    assert loaded.device == CPU and loaded.autocast is None
    result = loaded.probabilities(pixels)
    assert result.dtype == torch.float32 and result.shape == (2, 3, 64, 96)
    torch.testing.assert_close(result, _expected_probabilities(smp_model, pixels, card))


def test_fp16_state_dict_loads_as_fp32(tmp_path, smp_model, pixels):
    half = {k: v.half() if v.is_floating_point() else v for k, v in smp_model.state_dict().items()}
    card = ModelCard.from_file(_write_model(tmp_path / "m", {"state_dict": half}))
    loaded = load_model(card, CPU)
    assert all(p.dtype == torch.float32 for p in loaded.module.parameters())
    reference = _smp_model()
    reference.load_state_dict(half)
    torch.testing.assert_close(loaded.probabilities(pixels),
                               _expected_probabilities(reference, pixels, card))


def test_sha256_mismatch_is_refused(tmp_path, smp_model):
    path = _write_model(tmp_path / "m", smp_model.state_dict(), sha256="0" * 64)
    card = ModelCard.from_file(path)
    with pytest.raises(ValueError) as error:
        load_model(card, CPU)
    assert "0" * 64 in str(error.value) and sha256_file(card.checkpoint) in str(error.value)


def _ensemble_member(directory: Path, model: torch.nn.Module, name: str, **fields) -> dict:
    """Save ``model``'s weights as ``name`` in ``directory``; its card entry."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / name)
    return {"architecture": ARCH, "encoder": ENCODER, "checkpoint": name,
            "sha256": sha256_file(directory / name), "extra": EXTRA, **fields}


def test_ensemble_averages_the_members_probabilities(tmp_path, smp_model, pixels):
    torch.manual_seed(1)
    other = smp.create_model("Unet", encoder_name="mobilenet_v2", encoder_weights=None,
                             classes=len(CLASSES), decoder_channels=[32, 16, 8, 8, 4]).eval()
    member = _ensemble_member(tmp_path / "m", other, "other.pt",
                              encoder="mobilenet_v2", extra={"decoder_channels": [32, 16, 8, 8, 4]})
    card = ModelCard.from_file(_write_model(tmp_path / "m", smp_model.state_dict(),
                                            ensemble=[member]))
    assert [(m.encoder, m.checkpoint.name) for m in card.ensemble] == [("mobilenet_v2", "other.pt")]
    loaded = load_model(card, CPU)
    result = loaded.probabilities(pixels)
    first = _expected_probabilities(smp_model, pixels, card)
    second = _expected_probabilities(other, pixels, card)
    assert (first - second).abs().max() > 0.05  # the members disagree
    torch.testing.assert_close(result, (first + second) / 2)
    torch.testing.assert_close(result.sum(dim=1), torch.ones(2, 64, 96))


@pytest.mark.parametrize("member, field, message", [
    ({"checkpoint": "missing.pt"}, "ensemble[0].checkpoint", "does not exist"),
    ({"sha256": "xyz"}, "ensemble[0].sha256", "64 hexadecimal digits"),
    ({"encoder": "resnet1000"}, "ensemble[0].encoder", "not a segmentation_models_pytorch"),
    ({"extra": {"classes": 2}}, "ensemble[0].extra", "must not set classes"),
    ({"weights": "x"}, "ensemble[0]", '"architecture": ...'),
])
def test_ensemble_errors_name_the_member(tmp_path, smp_model, member, field, message):
    entry = {**_ensemble_member(tmp_path / "m", smp_model, "other.pt"), **member}
    path = _write_model(tmp_path / "m", smp_model.state_dict(), ensemble=[entry])
    with pytest.raises(ValueError) as error:
        ModelCard.from_file(path)
    assert f"field '{field}'" in str(error.value) and message in str(error.value)


def test_ensemble_member_checksum_and_format_are_checked(tmp_path, smp_model):
    entry = _ensemble_member(tmp_path / "m", smp_model, "other.pt", sha256="0" * 64)
    card = ModelCard.from_file(_write_model(tmp_path / "m", smp_model.state_dict(),
                                            ensemble=[entry]))
    with pytest.raises(ValueError, match=r"other\.pt: sha256 is [0-9a-f]{64}, but the card"):
        load_model(card, CPU)
    entry = _ensemble_member(tmp_path / "s", smp_model, "other.pt")
    path = _write_model(tmp_path / "s", {"w": torch.zeros(1)}, format="torchscript",
                        ensemble=[entry])
    with pytest.raises(ValueError, match="only state_dict models can form an ensemble"):
        ModelCard.from_file(path)


def test_mismatched_keys_are_named(tmp_path, smp_model):
    state = dict(smp_model.state_dict())
    del state["segmentation_head.0.bias"]
    state["decoder.extra.weight"] = torch.zeros(1)
    card = ModelCard.from_file(_write_model(tmp_path / "m", state))
    with pytest.raises(ValueError) as error:
        load_model(card, CPU)
    assert 'Missing key(s) in state_dict: "segmentation_head.0.bias"' in str(error.value)
    assert 'Unexpected key(s) in state_dict: "decoder.extra.weight"' in str(error.value)


def test_class_count_must_match_the_card(tmp_path):
    two_classes = _smp_model(classes=2).state_dict()
    card = ModelCard.from_file(_write_model(tmp_path / "m", two_classes))
    with pytest.raises(ValueError, match="size mismatch for segmentation_head.0.weight"):
        load_model(card, CPU)


def test_checkpoint_without_state_dict(tmp_path):
    card = ModelCard.from_file(_write_model(tmp_path / "m", {"optimizer": {"lr": 0.1}}))
    with pytest.raises(ValueError, match="no state dict found; top-level keys: \\[optimizer\\]"):
        load_model(card, CPU)


def test_torchscript_loads_and_output_channels_are_checked(tmp_path, smp_model, pixels):
    script = torch.jit.trace(smp_model, torch.zeros(1, 3, 64, 64))
    path = _write_model(tmp_path / "ts", script, format="torchscript", architecture="",
                        encoder="", extra=None)
    card = ModelCard.from_file(path)
    loaded = load_model(card, CPU)
    torch.testing.assert_close(loaded.probabilities(pixels),
                               _expected_probabilities(smp_model, pixels, card))

    two = torch.jit.script(torch.nn.Conv2d(3, 2, 1))
    card = ModelCard.from_file(_write_model(tmp_path / "two", two, format="torchscript"))
    with pytest.raises(ValueError, match="expected 3 channels"):
        load_model(card, CPU)


def test_probabilities_rejects_bad_batches(tmp_path, smp_model):
    loaded = load_model(ModelCard.from_file(
        _write_model(tmp_path / "m", smp_model.state_dict())), CPU)
    for batch in (np.zeros((1, 64, 48, 3), np.uint8), np.zeros((1, 64, 64, 3), np.float32),
                  np.zeros((64, 64, 3), np.uint8)):
        with pytest.raises(InvalidInput):
            loaded.probabilities(batch)


def test_unetplusplus_efficientnet_keys_as_saved_by_smp_0_3(tmp_path):
    """The papers' UNet++ / EfficientNet-B0 checkpoints (SMP 0.2.1 / 0.3.1) load unchanged:
    these key names are those SMP 0.3.1 (with efficientnet-pytorch 0.7.1) saves."""
    model = smp.UnetPlusPlus(encoder_name="efficientnet-b0", encoder_weights=None, classes=3)
    state = model.state_dict()
    for key in ("encoder._conv_stem.weight", "encoder._bn0.running_var",
                "encoder._blocks.0._depthwise_conv.weight", "encoder._blocks.0._se_reduce.bias",
                "encoder._blocks.15._project_conv.weight", "encoder._conv_head.weight",
                "decoder.blocks.x_0_0.conv1.0.weight", "decoder.blocks.x_3_3.conv2.1.weight",
                "decoder.blocks.x_0_4.conv2.0.weight", "segmentation_head.0.weight"):
        assert key in state, key
    assert len(state) == 492
    path = _write_model(tmp_path / "upp", {"state_dict": {f"module.{k}": v
                                                          for k, v in state.items()}},
                        architecture="UnetPlusPlus", encoder="efficientnet-b0", extra=None)
    assert load_model(ModelCard.from_file(path), CPU).card.id == "upp"


def test_select_device():
    assert select_device("cpu") == CPU
    assert select_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            select_device(f"cuda:{torch.cuda.device_count()}")


@pytest.fixture()
def script_model() -> torch.jit.ScriptModule:
    return torch.jit.script(torch.nn.Conv2d(3, len(CLASSES), 1))


def test_registry(tmp_path, script_model, monkeypatch):
    root = tmp_path / "models"
    for name in ("beta", "alpha"):
        _write_model(root / name, script_model, format="torchscript")
    single = tmp_path / "single" / "gamma"
    _write_model(single, script_model, format="torchscript")

    registry = ModelRegistry([root, single], CPU)
    assert [c.id for c in registry.cards()] == ["alpha", "beta", "gamma"]
    assert registry.default_id == "alpha"
    assert ModelRegistry([root], CPU, default_id="beta").default_id == "beta"
    assert registry.card("gamma").card_path == (single / "model.json").resolve()
    with pytest.raises(NotFound, match="unknown model 'delta'; available: alpha, beta, gamma"):
        registry.card("delta")
    with pytest.raises(NotFound):
        registry.get("delta")

    loads = []
    monkeypatch.setattr("roiseg.engine.models.load_model",
                        lambda card, device: loads.append(card.id) or load_model(card, device))
    first = registry.get("beta")
    assert registry.get("beta") is first and loads == ["beta"]
    assert first.card.id == "beta"


def test_registry_errors(tmp_path, script_model):
    _write_model(tmp_path / "a" / "same", script_model, format="torchscript")
    _write_model(tmp_path / "b" / "same", script_model, format="torchscript")
    with pytest.raises(ValueError, match="duplicate model id 'same'"):
        ModelRegistry([tmp_path / "a", tmp_path / "b"], CPU)
    with pytest.raises(ValueError, match="default model 'other' is not registered; "
                                         "available: same"):
        ModelRegistry([tmp_path / "a"], CPU, default_id="other")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no models found"):
        ModelRegistry([tmp_path / "empty"], CPU)
    with pytest.raises(ValueError, match="does not exist"):
        ModelRegistry([tmp_path / "nowhere"], CPU)
    _write_model(tmp_path / "c" / "broken", script_model, format="torchscript", tile_size=100)
    with pytest.raises(ValueError, match="tile_size"):
        ModelRegistry([tmp_path / "c"], CPU)


def test_registry_versions(tmp_path, script_model):
    """Versions registered at run time: `id` selects the default, `id@version` any served one."""
    _write_model(tmp_path / "models" / "alpha", script_model, format="torchscript", version="1")
    registry = ModelRegistry([tmp_path / "models"], CPU)
    newer = ModelCard.from_file(_write_model(tmp_path / "v2" / "alpha", script_model,
                                             format="torchscript", version="2",
                                             fine_tuned_from={"model": "alpha@1",
                                                              "sha256": "ab" * 32,
                                                              "examples": 3}))
    assert newer.fine_tuned_from == f"alpha@1 ({'ab' * 32})"
    assert registry.register(newer).id == "alpha@2"
    assert [c.version for c in registry.cards()] == ["1"] and registry.card("alpha").id == "alpha"
    assert [(c.id, default) for c, default in registry.versions("alpha")] == [
        ("alpha@1", True), ("alpha@2", False)]
    assert registry.card("alpha@2").version == "2" and registry.get("alpha@2").card.version == "2"
    with pytest.raises(InvalidInput, match="already has a version '2'"):
        registry.register(newer)
    with pytest.raises(NotFound, match="has no version '3'; its versions: 1, 2 "
                                       r"\(current: 'alpha@1'\)"):
        registry.card("alpha@3")
    with pytest.raises(InvalidInput, match="name a version"):
        registry.set_default("alpha")

    assert registry.set_default("alpha@2").id == "alpha@2"
    assert registry.card("alpha").version == "2" and registry.default_id == "alpha"
    with pytest.raises(FailedPrecondition, match="default version"):
        registry.retire("alpha@2")
    assert registry.retire("alpha@1").id == "alpha@1"
    assert registry.retired("alpha") == {"1"}
    with pytest.raises(NotFound, match="'alpha@1' was retired; the current version is 'alpha@2'"):
        registry.get("alpha@1")
    with pytest.raises(NotFound):
        registry.set_default("alpha@1")
    assert [c.id for c, _ in registry.versions("alpha")] == ["alpha@2"]


def test_registry_versions_under_concurrent_use(tmp_path, script_model):
    """Jobs resolving and loading models while versions are registered, switched and retired
    always get the model of the card they resolved."""
    import threading

    _write_model(tmp_path / "models" / "alpha", script_model, format="torchscript", version="0")
    registry = ModelRegistry([tmp_path / "models"], CPU)
    errors: list[BaseException] = []
    done = threading.Event()

    def segment() -> None:
        try:
            while not done.is_set():
                card = registry.card("alpha")
                assert registry.load(card).card.version == card.version
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=segment) for _ in range(3)]
    for worker in workers:
        worker.start()
    for version in range(1, 13):
        path = _write_model(tmp_path / f"v{version}" / "alpha", script_model,
                            format="torchscript", version=str(version))
        registry.register(ModelCard.from_file(path), make_default=version % 2 == 0)
        registry.set_default(f"alpha@{version}")
        registry.retire(f"alpha@{version - 1}")
    done.set()
    for worker in workers:
        worker.join()
    assert not errors, errors
    assert [c.id for c, _ in registry.versions("alpha")] == ["alpha@12"]
