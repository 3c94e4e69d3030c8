"""Raster post-processing: tissue mask, tumour hysteresis and minimum region sizes.

The tissue mask and the hysteresis follow paper 003 (Oslo general tumour model), which
works at 5 µm/px; its pixel counts are converted so that the physical sizes stay the same
at any input resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from roiseg.errors import InvalidInput

__all__ = ["NO_CLASS", "SOFT_HALF", "WORK_MPP", "enforce_min_sizes", "hysteresis_mask",
           "near_tissue", "soft_tissue_mask", "tissue_mask"]

#: Class-map value of pixels that belong to no class (glass, outside the ROI, background).
NO_CLASS = 255

#: Resolution (µm/px) the paper's masks are computed at.
WORK_MPP = 5.0
#: A soft mask's (`soft_tissue_mask`) value from which a pixel is inside: half of 255.
SOFT_HALF = 127.5

# Paper 003's parameters, in pixels at 5 µm/px.
_CANNY_LOW = 10
_CANNY_HIGH = 50
_MORPH_KERNEL_PX = 9
_MAX_HOLE_PX = 10_000  # 0.5 x 0.5 mm
_MIN_OBJECT_PX = 1_600  # 0.2 x 0.2 mm
_MEDIAN_APERTURE = 9
_GAUSSIAN_KERNEL = (5, 5)
_SMOOTH_TARGET_AREA = 1e6
_SMOOTH_MIN_FACTOR = 0.2
_PRUNE_PERCENTILE = 95.0
#: Blur (sigma, in 5 µm/px pixels) of the tissue mask before it is resized up to the input: its
#: outline follows the tissue smoothly rather than in 5 µm steps; below the minimum, no blur.
_EDGE_SIGMA_PX = 1.5
_MIN_EDGE_SIGMA_PX = 0.3

# 4-neighbour offsets (dy, dx).
_NEIGHBOURS_4 = ((-1, 0), (1, 0), (0, -1), (0, 1))


# --------------------------------------------------------------------------- public API


def present_values(class_map: np.ndarray) -> np.ndarray:
    """The values that occur in a uint8 map, ascending (a histogram, no full-size copy)."""
    histogram = cv2.calcHist([np.ascontiguousarray(class_map)], [0], None, [256], [0, 256])
    return np.flatnonzero(histogram.ravel())


def tissue_mask(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """Pixels showing tissue (or anything with texture) rather than blank glass.

    Paper 003's background segmentation, evaluated at 5 µm/px (or at the input
    resolution when that is coarser) and returned at the input size.

    Args:
        rgb: (H, W, 3) uint8 RGB image (a 4th channel is ignored; (H, W) grey accepted).
        mpp: µm per pixel of `rgb`.

    Returns:
        (H, W) bool mask, True on tissue.
    """
    image = _as_uint8_image(rgb)
    _check_mpp(mpp)
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        return np.zeros((height, width), dtype=bool)
    mask, scale = _work_tissue_mask(image, mpp)
    return _resize_mask(mask, (height, width), _EDGE_SIGMA_PX * scale)


def soft_tissue_mask(rgb: np.ndarray, mpp: float, blur: bool = True) -> np.ndarray:
    """`tissue_mask` at its work resolution (`rgb` at 5 µm/px or coarser), as uint8 0..255 to
    be resized up bilinearly and thresholded at half (`SOFT_HALF`): blurred as `tissue_mask`
    blurs it, unless not `blur` (a mask used at this very resolution)."""
    image = _as_uint8_image(rgb)
    _check_mpp(mpp)
    mask, scale = _work_tissue_mask(image, mpp)
    soft = _soften(mask, _EDGE_SIGMA_PX * scale if blur else 0.0)
    return np.rint(soft * 255).astype(np.uint8)


def near_tissue(soft_tissue: np.ndarray, reach_px: float) -> np.ndarray:
    """A soft tissue mask (`soft_tissue_mask`) grown by `reach_px` of its pixels, as uint8
    0 / 255."""
    inside = (soft_tissue >= SOFT_HALF).view(np.uint8)
    side = 2 * max(0, round(reach_px)) + 1
    grown = cv2.dilate(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side)))
    return grown * np.uint8(255)


def _work_tissue_mask(image: np.ndarray, mpp: float) -> tuple[np.ndarray, float]:
    """Paper 003's tissue decisions at its work resolution (see `_to_work_resolution`), and
    the factor from 5 µm/px pixels to that mask's pixels."""
    work, scale = _to_work_resolution(image, mpp)
    kernel = _square_kernel(_MORPH_KERNEL_PX * scale)
    edges = cv2.Canny(work, _CANNY_LOW, _CANNY_HIGH, apertureSize=3)
    mask = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, kernel) > 0
    mask = _fill_small_holes(mask, _MAX_HOLE_PX * scale * scale)
    mask = cv2.morphologyEx(mask.view(np.uint8), cv2.MORPH_OPEN, kernel) > 0
    return _remove_small_objects(mask, _MIN_OBJECT_PX * scale * scale), scale


def hysteresis_mask(probability: np.ndarray, tissue: np.ndarray, mpp: float,
                    low: float = 85 / 255, high: float = 229 / 255) -> np.ndarray:
    """Tumour pixels from a tumour probability map, by paper 003's post-processing.

    Args:
        probability: (H, W) tumour probability, uint8 0..255 or float 0..1.
        tissue: (H, W) bool tissue mask (see `tissue_mask`); the result lies inside it.
        mpp: µm per pixel of both maps.
        low: lower hysteresis threshold (0..1); regions grow over pixels above it.
        high: upper threshold (0..1); a region needs pixels above it to exist, and its
            95th-percentile probability must exceed it to be kept.

    Returns:
        (H, W) bool mask of tumour.
    """
    prob8 = _probability_uint8(probability)
    tissue = np.asarray(tissue, dtype=bool)
    if tissue.shape != prob8.shape:
        raise ValueError(f"tissue mask {tissue.shape} and probability {prob8.shape} differ in "
                         "shape")
    _check_mpp(mpp)
    if not (0.0 <= low <= high <= 1.0) or not (math.isfinite(low) and math.isfinite(high)):
        raise InvalidInput(f"hysteresis thresholds must satisfy 0 <= low <= high <= 1 "
                           f"(got low={low}, high={high})")
    height, width = prob8.shape
    if height == 0 or width == 0:
        return np.zeros((height, width), dtype=bool)

    work, scale = _to_work_resolution(prob8, mpp)
    smooth = _smooth_probability(work)
    low255, high255 = round(low * 255.0, 6), round(high * 255.0, 6)

    labels, count = _label(smooth > low255, connectivity=4)
    keep = np.zeros(count + 1, dtype=bool)
    strong = smooth > high255
    keep[np.unique(labels[strong])] = True  # hysteresis: a region needs a strong pixel
    keep[0] = False
    keep &= _label_percentiles(labels, smooth, count, _PRUNE_PERCENTILE) > high255
    mask = keep[labels]

    work_tissue = _resize_mask_area(tissue, work.shape)
    mask &= work_tissue
    mask = _fill_small_holes(mask, _MAX_HOLE_PX * scale * scale)
    mask = _remove_small_objects(mask, _MIN_OBJECT_PX * scale * scale)
    # Filling may cover glass enclosed by tumour; keep the result inside the tissue.
    return _resize_mask(mask, (height, width)) & tissue


def enforce_min_sizes(class_map: np.ndarray, mpp: float, min_area_um2: float,
                      min_hole_um2: float, classes: Sequence[int] | None = None) -> np.ndarray:
    """Removes class regions and holes below minimum areas.

    Regions are 4-connected. A region of one of `classes` smaller than `min_area_um2` takes
    the class it shares the longest border with (NO_CLASS only when it borders nothing
    else). A hole in a region of one of `classes` (an area of other values enclosed by
    that region alone) smaller than `min_hole_um2` takes the region's class. A limit of 0
    disables its step.

    Args:
        class_map: (H, W) uint8 class indices, NO_CLASS where no class.
        mpp: µm per pixel of the map.
        min_area_um2: smallest region area kept, in µm².
        min_hole_um2: smallest hole area kept, in µm².
        classes: classes whose regions and holes are processed; None for every class.

    Returns:
        A new (H, W) uint8 class map.
    """
    out = np.array(class_map, dtype=np.uint8, copy=True)
    if out.ndim != 2:
        raise ValueError(f"class map must be 2-D, got shape {out.shape}")
    _check_mpp(mpp)
    for name, value in (("min_area_um2", min_area_um2), ("min_hole_um2", min_hole_um2)):
        if value is None or not math.isfinite(value) or value < 0:
            raise InvalidInput(f"{name} must be a finite number >= 0 (got {value})")
    if out.size == 0:
        return out
    pixel_um2 = mpp * mpp
    wanted = _wanted_classes(out, classes)
    if min_area_um2 > 0 and wanted:
        _relabel_small_regions(out, wanted, min_area_um2 / pixel_um2)
    if min_hole_um2 > 0 and wanted:
        _fill_small_class_holes(out, wanted, min_hole_um2 / pixel_um2)
    return out


# --------------------------------------------------------------------------- helpers


def _check_mpp(mpp: float) -> None:
    if not (mpp is not None and math.isfinite(mpp) and mpp > 0):
        raise InvalidInput(f"pixel size must be a positive number of µm/px (got {mpp})")


def _as_uint8_image(rgb: np.ndarray) -> np.ndarray:
    image = np.asarray(rgb)
    if image.ndim == 3 and image.shape[2] >= 3:
        image = image[:, :, :3]
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim != 2:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def _probability_uint8(probability: np.ndarray) -> np.ndarray:
    prob = np.asarray(probability)
    if prob.ndim != 2:
        raise ValueError(f"probability must be 2-D, got shape {prob.shape}")
    if prob.dtype == np.uint8:
        return np.ascontiguousarray(prob)
    if np.issubdtype(prob.dtype, np.floating):
        return np.clip(np.rint(np.nan_to_num(prob) * 255.0), 0, 255).astype(np.uint8)
    raise ValueError(f"probability must be uint8 (0..255) or float (0..1), got {prob.dtype}")


def _to_work_resolution(image: np.ndarray, mpp: float) -> tuple[np.ndarray, float]:
    """The image at 5 µm/px (never upsampled) and the factor from 5 µm/px pixels to its
    pixels (1 at 5 µm/px, < 1 when the input is coarser)."""
    if mpp >= WORK_MPP:
        return image, WORK_MPP / mpp
    height, width = image.shape[:2]
    size = (max(1, round(width * mpp / WORK_MPP)), max(1, round(height * mpp / WORK_MPP)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), 1.0


def _square_kernel(size: float) -> np.ndarray:
    side = max(1, round(size))
    if side % 2 == 0:
        side += 1
    return np.ones((side, side), dtype=np.uint8)


def _smooth_probability(prob: np.ndarray) -> np.ndarray:
    """Paper 003's smoothing: resize to about 1e6 px (at most 0.2x shrink), median 9,
    Gaussian 5x5, back to the input size. Returns float32 on the 0..255 scale."""
    height, width = prob.shape
    factor = max(_SMOOTH_MIN_FACTOR, math.sqrt(_SMOOTH_TARGET_AREA / (height * width)))
    size = (max(1, math.floor(width * factor)), max(1, math.floor(height * factor)))
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    small = cv2.resize(prob, size, interpolation=interpolation)
    small = cv2.medianBlur(small, _MEDIAN_APERTURE)
    small = cv2.GaussianBlur(small.astype(np.float32), _GAUSSIAN_KERNEL, 0)
    interpolation = cv2.INTER_LINEAR if factor < 1 else cv2.INTER_AREA
    return cv2.resize(small, (width, height), interpolation=interpolation)


def _label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    count, labels = cv2.connectedComponents(mask.view(np.uint8) if mask.dtype == bool
                                            else mask.astype(np.uint8),
                                            connectivity=connectivity, ltype=cv2.CV_32S)
    return labels, count - 1


def _label_stats(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and per-label stats (cv2 CC_STAT_* columns; row 0 is the unlabelled set)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(mask).view(np.uint8), connectivity=connectivity,
        ltype=cv2.CV_32S)
    return labels, stats


def _label_percentiles(labels: np.ndarray, values: np.ndarray, count: int,
                       percentile: float) -> np.ndarray:
    """Per-label percentile (numpy's linear method) of `values`; index 0 unused (0)."""
    result = np.zeros(count + 1, dtype=np.float64)
    inside = labels > 0
    if count == 0 or not inside.any():
        return result
    lab = labels[inside]
    val = values[inside]
    order = np.lexsort((val, lab))
    lab, val = lab[order], val[order].astype(np.float64)
    sizes = np.bincount(lab, minlength=count + 1)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    present = np.flatnonzero(sizes)
    n = sizes[present]
    position = percentile / 100.0 * (n - 1)
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, n - 1)
    fraction = position - lower
    base = starts[present]
    result[present] = val[base + lower] + (val[base + upper] - val[base + lower]) * fraction
    return result


def _touches_border(stats: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right = left + stats[:, cv2.CC_STAT_WIDTH]
    bottom = top + stats[:, cv2.CC_STAT_HEIGHT]
    return (left == 0) | (top == 0) | (right == width) | (bottom == height)


def _fill_small_holes(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """Fills background areas enclosed by the mask (not touching the image border) with
    fewer than `max_hole_px` pixels."""
    if max_hole_px <= 0 or mask.all():
        return mask
    labels, stats = _label_stats(~mask, connectivity=4)
    small = (stats[:, cv2.CC_STAT_AREA] < max_hole_px) & ~_touches_border(stats, mask.shape)
    small[0] = False
    if not small.any():
        return mask
    return mask | small[labels]


def _remove_small_objects(mask: np.ndarray, min_object_px: float) -> np.ndarray:
    """Removes 4-connected foreground objects with fewer than `min_object_px` pixels that
    do not touch the image border (on a region crop, those may go on outside it)."""
    if min_object_px <= 0 or not mask.any():
        return mask
    labels, stats = _label_stats(mask, connectivity=4)
    keep = (stats[:, cv2.CC_STAT_AREA] >= min_object_px) | _touches_border(stats, mask.shape)
    keep[0] = False
    return keep[labels]


def _resize_mask(mask: np.ndarray, shape: tuple[int, int], sigma_px: float = 0.0) -> np.ndarray:
    """Resizes a mask as a float, bilinearly, thresholded at half, so upsampled outlines are
    smooth rather than blocky; blurred first (Gaussian, `sigma_px` of its own pixels) when
    given: straight edges stay where they were, while the corners of its pixels and steps round
    off instead of showing as staircases at the finer resolution."""
    if mask.shape == shape:
        return mask
    soft = _soften(mask, sigma_px)
    return cv2.resize(soft, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) >= 0.5


def _soften(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """A mask as float32, blurred (Gaussian, `sigma_px` of its pixels) unless below the
    minimum."""
    soft: np.ndarray = mask.astype(np.float32)
    if sigma_px >= _MIN_EDGE_SIGMA_PX:
        soft = cv2.GaussianBlur(soft, (0, 0), sigma_px, borderType=cv2.BORDER_REPLICATE)
    return soft


def _resize_mask_area(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Downsamples a mask by area: a pixel is set when at least half of it is covered."""
    if mask.shape == shape:
        return mask
    resized = cv2.resize(mask.astype(np.uint8) * np.uint8(255), (shape[1], shape[0]),
                         interpolation=cv2.INTER_AREA)
    return resized >= 128


def _wanted_classes(class_map: np.ndarray, classes: Sequence[int] | None) -> list[int]:
    present = [int(c) for c in present_values(class_map) if c != NO_CLASS]
    if classes is None:
        return present
    requested = {int(c) for c in classes}
    return [c for c in present if c in requested]


def _relabel_small_regions(out: np.ndarray, classes: Sequence[int], min_px: float) -> None:
    """Gives every small region of `classes` the value it borders most, in place."""
    ys_parts, xs_parts, ids_parts = [], [], []
    next_id = 0
    for value in classes:
        labels, stats = _label_stats(out == value, connectivity=4)
        small = stats[:, cv2.CC_STAT_AREA] < min_px
        small[0] = False
        if not small.any():
            continue
        ys, xs = np.nonzero(small[labels])
        ids = np.cumsum(small) - 1 + next_id  # dense region ids across classes
        ys_parts.append(ys)
        xs_parts.append(xs)
        ids_parts.append(ids[labels[ys, xs]])
        next_id += int(small.sum())
    if next_id == 0:
        return
    ys = np.concatenate(ys_parts)
    xs = np.concatenate(xs_parts)
    ids = np.concatenate(ids_parts)
    pending = np.zeros(out.shape, dtype=bool)
    pending[ys, xs] = True
    height, width = out.shape

    # Regions bordering only other small regions are resolved once those are.
    while ys.size:
        keys = []
        for dy, dx in _NEIGHBOURS_4:
            ny, nx = ys + dy, xs + dx
            inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
            ny, nx, nid = ny[inside], nx[inside], ids[inside]
            stable = ~pending[ny, nx]
            keys.append(nid[stable].astype(np.int64) * 256 + out[ny[stable], nx[stable]])
        pairs, counts = np.unique(np.concatenate(keys), return_counts=True)
        if pairs.size == 0:
            break  # the rest border nothing but each other or the image edge: keep them
        region, neighbour = pairs // 256, pairs % 256
        # Best neighbour per region: any class before NO_CLASS, then the longest border,
        # then the lowest value.
        order = np.lexsort((neighbour, -counts, neighbour == NO_CLASS, region))
        region, neighbour = region[order], neighbour[order]
        first = np.ones(region.size, dtype=bool)
        first[1:] = region[1:] != region[:-1]
        choice = np.full(next_id, -1, dtype=np.int64)
        choice[region[first]] = neighbour[first]
        new_value = choice[ids]
        resolved = new_value >= 0
        out[ys[resolved], xs[resolved]] = new_value[resolved].astype(np.uint8)
        pending[ys[resolved], xs[resolved]] = False
        ys, xs, ids = ys[~resolved], xs[~resolved], ids[~resolved]


def _fill_small_class_holes(out: np.ndarray, classes: Sequence[int], max_px: float) -> None:
    """Fills small holes of each class's regions with the class, in place."""
    for value in classes:
        other = out != value
        if other.all() or not other.any():
            continue
        # 8-connected holes pair with 4-connected regions: each enclosed component of
        # other values is surrounded by exactly one region of `value`.
        labels, stats = _label_stats(other, connectivity=8)
        small = (stats[:, cv2.CC_STAT_AREA] < max_px) & ~_touches_border(stats, out.shape)
        small[0] = False
        if small.any():
            out[small[labels]] = value
