"""Tests of roiseg.engine.postprocess: tissue mask, tumour hysteresis and minimum region sizes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile
from conftest import CMU as SLIDE
from roiseg.engine import postprocess
from roiseg.engine.postprocess import NO_CLASS, enforce_min_sizes, hysteresis_mask, tissue_mask
from roiseg.errors import InvalidInput
from scipy import ndimage as ndi

SLIDE_MPP = 0.499  # from the file's Aperio description

# Regions of the slide's first page (rows, columns), picked by eye on an overview.
GLASS_BOX = (slice(1700, 2300), slice(60, 560))  # blank glass left of the tissue
TISSUE_BOXES = [(slice(1900, 2500), slice(900, 1150)),  # dermis / epidermis
                (slice(2600, 2950), slice(700, 1500))]


def _hsv(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)


def _disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _regions(class_map: np.ndarray, value: int) -> list[int]:
    """Sizes of the 4-connected regions of `value`."""
    labels, count = ndi.label(class_map == value)
    return list(np.bincount(labels.ravel())[1:]) if count else []


@pytest.fixture(scope="module")
def slide_image() -> np.ndarray:
    return tifffile.imread(SLIDE, key=0)


# --------------------------------------------------------------------------- tissue_mask


def test_tissue_mask_separates_glass_from_tissue_on_a_real_slide(slide_image):
    hsv = _hsv(slide_image)
    glass_like = (hsv[..., 1] < 25) & (hsv[..., 2] > 200)
    # The boxes really are glass / tissue by a simple saturation-brightness criterion.
    assert glass_like[GLASS_BOX].mean() > 0.99
    for box in TISSUE_BOXES:
        assert (hsv[box][..., 1] > 40).mean() > 0.75

    mask = tissue_mask(slide_image, SLIDE_MPP)

    assert mask.shape == slide_image.shape[:2] and mask.dtype == bool
    assert mask[GLASS_BOX].mean() < 0.01
    for box in TISSUE_BOXES:
        assert mask[box].mean() > 0.99
    # Over the whole image the mask agrees with the criterion on clearly saturated pixels
    # (tissue) and leaves most glass-like pixels out.
    assert mask[hsv[..., 1] > 60].mean() > 0.97
    assert mask[glass_like].mean() < 0.35


def _fat_image(tissue_crop: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Glass at 0.5 µm/px with a strip of real tissue and a patch of synthetic fat:
    white adipocytes of ~100 µm separated by 1 µm pink membranes."""
    rng = np.random.default_rng(0)
    height = width = 2000
    image = np.clip(rng.normal(242, 2, (height, width, 3)), 0, 255).astype(np.uint8)
    image[:, :tissue_crop.shape[1]] = tissue_crop[:height]
    fat_box = (slice(300, 1700), slice(500, 1800))
    fh, fw = 1400, 1300
    seeds = np.ones((fh, fw), dtype=bool)
    count = fh * fw // (180 * 180)
    seeds[rng.integers(0, fh, count), rng.integers(0, fw, count)] = False
    _, (iy, ix) = ndi.distance_transform_edt(seeds, return_indices=True)
    cell = iy * fw + ix
    membrane = np.zeros((fh, fw), dtype=bool)
    membrane[:-1] |= cell[:-1] != cell[1:]
    membrane[:, :-1] |= cell[:, :-1] != cell[:, 1:]
    membrane = cv2.dilate(membrane.view(np.uint8), np.ones((2, 2), np.uint8)) > 0
    fat = np.clip(rng.normal(243, 2, (fh, fw, 3)), 0, 255).astype(np.uint8)
    fat[membrane] = (225, 160, 205)
    image[fat_box] = fat
    return image, fat_box


def test_tissue_mask_keeps_fat_next_to_tissue(slide_image):
    image, fat_box = _fat_image(slide_image[900:2900, 700:1200])
    inner = (slice(fat_box[0].start + 200, fat_box[0].stop - 200),
             slice(fat_box[1].start + 200, fat_box[1].stop - 200))
    # Fat is as bright and unsaturated as glass: a brightness threshold would drop it.
    assert (_hsv(image[inner])[..., 2] > 200).mean() > 0.95

    mask = tissue_mask(image, 0.5)

    assert mask[inner].mean() > 0.97
    assert mask[1800:, 600:].mean() == 0.0  # glass below the fat
    assert mask[:200, 600:].mean() == 0.0  # glass above it


def _glass(shape: tuple[int, int], seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(241, 2, (*shape, 3)), 0, 255).astype(np.uint8)


def test_tissue_mask_drops_a_fibre_attached_to_tissue(slide_image):
    """A hair-thin line reaching from tissue into glass goes (the 9x9 opening)."""
    image = _glass((2000, 2000))
    image[:, :600] = slide_image[900:2900, 700:1300]
    cv2.line(image, (600, 1000), (1900, 1000), (90, 80, 110), 4)  # 2 µm thick, 0.65 mm
    mask = tissue_mask(image, 0.5)
    assert mask[:, 100:500].mean() > 0.9
    assert not mask[900:1100, 800:].any()


def _debris_scene(tissue: np.ndarray) -> tuple[np.ndarray, dict[str, tuple[slice, slice]]]:
    """Glass at 0.5 µm/px with tissue pieces of 300 µm and 100 µm."""
    image = _glass((3000, 3000))
    pieces = {"big": (slice(600, 1200), slice(600, 1200)),
              "small": (slice(2000, 2200), slice(2000, 2200))}
    for box in pieces.values():
        image[box] = tissue[:box[0].stop - box[0].start, :box[1].stop - box[1].start]
    return image, pieces


@pytest.mark.parametrize("mpp", [0.5, 10.0])
def test_tissue_mask_minimum_object_size_is_physical(slide_image, mpp):
    """0.2 x 0.2 mm is the smallest piece kept, at any resolution."""
    tissue = slide_image[2000:2600, 700:1300]
    assert (_hsv(tissue)[..., 1] > 40).mean() > 0.8
    image, pieces = _debris_scene(tissue)
    factor = 0.5 / mpp
    if factor != 1:
        image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        pieces = {k: tuple(slice(round(s.start * factor), round(s.stop * factor)) for s in box)
                  for k, box in pieces.items()}
    mask = tissue_mask(image, mpp)
    assert mask[pieces["big"]].mean() > 0.9
    assert not mask[pieces["small"]].any()
    assert mask.sum() < 1.5 * mask[pieces["big"]].size


def test_tissue_mask_blank_glass_has_no_tissue():
    rng = np.random.default_rng(1)
    white = np.clip(rng.normal(240, 2, (1200, 1500, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(white, 0.5).any()
    assert not tissue_mask(np.full((600, 800, 3), 255, np.uint8), 1.0).any()


def test_tissue_mask_tiny_and_coarse_inputs(slide_image):
    for shape in [(1, 1, 3), (3, 2, 3), (7, 9, 3)]:
        mask = tissue_mask(np.full(shape, 128, np.uint8), 0.25)
        assert mask.shape == shape[:2] and mask.dtype == bool
    # Coarser than 5 µm/px: worked on at the input resolution, thresholds scaled by area.
    coarse = cv2.resize(slide_image, None, fx=0.05, fy=0.05, interpolation=cv2.INTER_AREA)
    mask = tissue_mask(coarse, SLIDE_MPP / 0.05)  # ~10 µm/px
    assert mask.shape == coarse.shape[:2]

    def shrink(box: tuple[slice, slice]) -> tuple[slice, ...]:
        return tuple(slice(s.start // 20 + 1, s.stop // 20 - 1) for s in box)

    assert mask[shrink(GLASS_BOX)].mean() < 0.05
    assert mask[shrink(TISSUE_BOXES[0])].mean() > 0.9
    assert tissue_mask(np.zeros((0, 5, 3), np.uint8), 1.0).shape == (0, 5)


def _turning_per_px(mask: np.ndarray) -> float:
    """How much the mask's outlines turn per pixel of their length (radians), on polygons
    within 1 px of them: a staircase turns 90° at every step, a smooth outline little."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    turning = length = 0.0
    for contour in contours:
        if len(contour) < 50:
            continue
        points = cv2.approxPolyDP(contour, 1.0, True)[:, 0, :].astype(float)
        sides = np.diff(np.r_[points, points[:1]], axis=0)
        angles = np.arctan2(sides[:, 1], sides[:, 0])
        turns = (np.diff(np.r_[angles, angles[:1]]) + np.pi) % (2 * np.pi) - np.pi
        turning += float(np.abs(turns).sum())
        length += float(np.hypot(sides[:, 0], sides[:, 1]).sum())
    return turning / length


def test_tissue_mask_edges_are_smooth_at_the_model_resolution(slide_image):
    """Worked out at 5 µm/px, the mask's outline at 1 µm/px follows the tissue without 5 µm
    steps (it turned 0.043 rad/px when resized bilinearly alone), and its tissue/glass
    decisions stay those of the work resolution."""
    image = cv2.resize(slide_image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    mpp = SLIDE_MPP * 2
    mask = tissue_mask(image, mpp)
    assert _turning_per_px(mask) < 0.025
    work, _ = postprocess._work_tissue_mask(image, mpp)
    blocky = postprocess._resize_mask(work, mask.shape)
    assert (mask != blocky).mean() < 0.005
    assert _turning_per_px(blocky) > 0.035


def test_tissue_mask_rejects_bad_pixel_size():
    with pytest.raises(InvalidInput):
        tissue_mask(np.zeros((4, 4, 3), np.uint8), 0.0)


# --------------------------------------------------------------------------- hysteresis

HYST_MPP = 2.0
HYST_POINTS = {  # (row, column) of each feature's centre in the synthetic map
    "strong": (250, 180), "hole": (250, 250), "glass_band": (250, 380),
    "weak": (250, 750), "seeded_weak": (750, 250), "small": (650, 650),
    "medium": (820, 820), "background": (500, 500)}


@pytest.fixture(scope="module")
def probability_map() -> tuple[np.ndarray, np.ndarray]:
    """Tumour probability at 2 µm/px (2 x 2 mm) and its tissue mask.

    - strong: disk r=300 µm at 0.97 with a hole r=50 µm at 0.1; a glass band crosses it
    - weak: disk r=240 µm at 0.8, peak 0.88 (never above high)
    - seeded_weak: disk r=260 µm at 0.6 around a strong spot r=30 µm: it passes the
      hysteresis but its 95th percentile is low
    - small: strong disk r=80 µm (~800 px at 5 µm/px < 1600); medium: r=150 µm (~2800)
    - Gaussian noise (sd 0.05) everywhere.
    """
    rng = np.random.default_rng(0)
    shape = (1000, 1000)
    p = np.full(shape, 0.05)
    p[_disk(shape, 250, 250, 150)] = 0.97
    p[_disk(shape, 250, 250, 25)] = 0.1
    p[_disk(shape, 250, 750, 120)] = 0.8
    p[_disk(shape, 250, 750, 30)] = 0.88
    p[_disk(shape, 750, 250, 130)] = 0.6
    p[_disk(shape, 750, 250, 15)] = 0.97
    p[_disk(shape, 650, 650, 40)] = 0.97
    p[_disk(shape, 820, 820, 75)] = 0.97
    p = np.clip(p + rng.normal(0, 0.05, shape), 0, 1)
    tissue = np.ones(shape, dtype=bool)
    tissue[:, 360:400] = False
    return p, tissue


def _at(mask: np.ndarray, name: str) -> bool:
    return bool(mask[HYST_POINTS[name]])


def test_hysteresis_keeps_strong_drops_weak_and_specks(probability_map):
    p, tissue = probability_map
    mask = hysteresis_mask(p, tissue, HYST_MPP)
    assert mask.shape == p.shape and mask.dtype == bool
    assert _at(mask, "strong") and _at(mask, "medium")
    assert _at(mask, "hole")  # a hole of ~400 px at 5 µm/px is filled
    assert not _at(mask, "weak")  # never above `high`
    assert not _at(mask, "seeded_weak")  # 95th percentile <= high
    assert not mask[_disk(p.shape, 750, 250, 15)].any()
    assert not _at(mask, "small")  # below 1600 px at 5 µm/px
    assert not _at(mask, "background")
    assert not (mask & ~tissue).any()  # inside the tissue
    assert not mask[:, 360:400].any()
    # The strong disk is recovered up to the smoothing blur.
    strong = _disk(p.shape, 250, 250, 150) & tissue
    assert mask[strong].mean() > 0.97
    assert mask[_disk(p.shape, 820, 820, 75)].mean() > 0.95


def test_hysteresis_thresholds_change_the_outcome(probability_map):
    p, tissue = probability_map
    lenient = hysteresis_mask(p, tissue, HYST_MPP, low=0.3, high=0.7)
    assert _at(lenient, "weak")
    assert not _at(lenient, "seeded_weak")  # its 95th percentile (~0.6) is still below
    assert _at(lenient, "strong")
    strict = hysteresis_mask(p, tissue, HYST_MPP, low=0.5, high=0.98)
    assert not strict.any()


def test_hysteresis_tissue_cut_before_minimum_size():
    """Tumour mostly on glass: the part inside the tissue is below the minimum size."""
    shape = (400, 400)  # 2 µm/px
    p = np.full(shape, 0.02)
    p[_disk(shape, 200, 200, 80)] = 0.97  # r=160 µm: 3200 px at 5 µm/px
    tissue = np.zeros(shape, dtype=bool)
    tissue[:, :150] = True  # keeps ~25 % of the disk: < 1600 px at 5 µm/px
    assert not hysteresis_mask(p, tissue, 2.0).any()
    assert hysteresis_mask(p, np.ones(shape, bool), 2.0)[200, 200]


def test_hysteresis_accepts_uint8_and_float(probability_map):
    p, tissue = probability_map
    as_float = hysteresis_mask(p, tissue, HYST_MPP)
    as_uint8 = hysteresis_mask(np.rint(p * 255).astype(np.uint8), tissue, HYST_MPP)
    np.testing.assert_array_equal(as_float, as_uint8)


def test_hysteresis_respects_physical_size(probability_map):
    """The same map said to be at 1 µm/px is 4x smaller in area: medium falls below
    0.2 x 0.2 mm and is removed."""
    p, tissue = probability_map
    mask = hysteresis_mask(p, tissue, 1.0)
    assert _at(mask, "strong") and not _at(mask, "medium")


def test_hysteresis_small_and_coarse_inputs():
    p = np.zeros((5, 4), np.uint8)
    tissue = np.ones((5, 4), bool)
    assert not hysteresis_mask(p, tissue, 0.5).any()
    coarse = np.zeros((120, 120), np.uint8)
    coarse[20:100, 20:100] = 250
    mask = hysteresis_mask(coarse, np.ones_like(coarse, bool), 10.0)
    assert mask[60, 60] and not mask[5, 5]


def test_hysteresis_rejects_bad_input(probability_map):
    p, tissue = probability_map
    with pytest.raises(InvalidInput):
        hysteresis_mask(p, tissue, HYST_MPP, low=0.9, high=0.5)
    with pytest.raises(ValueError):
        hysteresis_mask(p, tissue[:-1], HYST_MPP)


# --------------------------------------------------------------------------- min sizes


def test_small_island_takes_surrounding_class_big_one_kept():
    m = np.zeros((60, 60), np.uint8)
    m[10:13, 10:13] = 1  # 9 px
    m[30:40, 30:40] = 2  # 100 px
    out = enforce_min_sizes(m, 1.0, 20.0, 0.0)
    assert (out[10:13, 10:13] == 0).all()
    assert (out[30:40, 30:40] == 2).all()
    assert out is not m and m[11, 11] == 1  # a new map; the input is untouched
    np.testing.assert_array_equal(enforce_min_sizes(m, 1.0, 0.0, 0.0), m)


def test_small_region_takes_the_class_with_the_longest_border():
    m = np.zeros((40, 40), np.uint8)
    m[:, 20:] = 1
    m[10:14, 17:20] = 2  # 3 columns on class 0's side: border with 0 = 3+3+4 = 10
    m[10:14, 20:21] = 2  # 1 column on class 1's side: border with 1 = 1+1+4 = 6
    out = enforce_min_sizes(m, 1.0, 20.0, 0.0)
    assert (out[10:14, 17:21] == 0).all()
    m2 = m.copy()
    m2[10:14, 17:21] = 0
    m2[10:14, 19:24] = 2  # mostly on class 1's side
    out = enforce_min_sizes(m2, 1.0, 21.0, 0.0)
    assert (out[10:14, 19:24] == 1).all()


def test_small_hole_filled_big_hole_kept():
    m = np.full((80, 80), NO_CLASS, np.uint8)
    m[10:70, 10:70] = 1
    m[20:22, 20:22] = NO_CLASS  # 4 px hole of no class
    m[30:33, 30:33] = 2  # 9 px hole of another class
    m[45:60, 45:60] = NO_CLASS  # 225 px hole
    out = enforce_min_sizes(m, 1.0, 0.0, 50.0)
    assert (out[20:22, 20:22] == 1).all()
    assert (out[30:33, 30:33] == 1).all()
    assert (out[45:60, 45:60] == NO_CLASS).all()
    assert (out[:10] == NO_CLASS).all()  # outside: not a hole
    np.testing.assert_array_equal(enforce_min_sizes(m, 1.0, 0.0, 0.0), m)


def test_hole_needs_one_enclosing_region():
    """A small area between two regions of different classes is no hole."""
    m = np.zeros((30, 30), np.uint8)
    m[:, 15:] = 1
    m[10:12, 14:16] = NO_CLASS  # straddles the 0 | 1 border
    out = enforce_min_sizes(m, 1.0, 100.0, 100.0)
    assert (out[10:12, 14:16] == NO_CLASS).all()
    # Touching the map's edge is not enclosed either.
    m = np.ones((30, 50), np.uint8)
    m[0:2, 10:12] = NO_CLASS
    m[10:12, 48:50] = NO_CLASS
    m[28:30, 20:22] = NO_CLASS
    m[20:22, 20:22] = NO_CLASS  # enclosed
    out = enforce_min_sizes(m, 1.0, 0.0, 100.0)
    assert (out[0:2, 10:12] == NO_CLASS).all()
    assert (out[10:12, 48:50] == NO_CLASS).all()
    assert (out[28:30, 20:22] == NO_CLASS).all()
    assert (out[20:22, 20:22] == 1).all()


def test_no_class_handling():
    m = np.full((40, 40), NO_CLASS, np.uint8)
    m[5:8, 5:8] = 1  # surrounded by no class only
    m[20:40, 0:20] = 0
    m[18:20, 5:15] = 2  # borders no class (14 edges) and class 0 (10 edges)
    m[25:27, 25:27] = 3  # in no class
    m[30:32, 10:12] = NO_CLASS  # a small area of no class is never a small region
    out = enforce_min_sizes(m, 1.0, 30.0, 0.0)
    assert (out[5:8, 5:8] == NO_CLASS).all()
    assert (out[18:20, 5:15] == 0).all()  # a class is preferred over no class
    assert (out[25:27, 25:27] == NO_CLASS).all()
    assert (out[30:32, 10:12] == NO_CLASS).all()
    assert (out[20:40, 0:20] != NO_CLASS).sum() == 400 - 4


def test_areas_are_in_square_microns():
    m = np.zeros((30, 30), np.uint8)
    m[10:13, 10:13] = 1  # 9 px
    assert (enforce_min_sizes(m, 1.0, 5.0, 0.0)[10:13, 10:13] == 1).all()  # 9 µm²
    assert (enforce_min_sizes(m, 0.25, 5.0, 0.0)[10:13, 10:13] == 0).all()  # 0.56 µm²
    assert (enforce_min_sizes(m, 1.0, 0.0, 5.0)[10:13, 10:13] == 1).all()
    assert (enforce_min_sizes(m, 0.25, 0.0, 5.0)[10:13, 10:13] == 0).all()


def test_regions_use_4_connectivity():
    m = np.zeros((10, 10), np.uint8)
    m[2, 2] = m[3, 3] = 1  # diagonal: two 1-px regions
    m[6, 6] = m[6, 7] = 1  # one 2-px region
    out = enforce_min_sizes(m, 1.0, 1.5, 0.0)
    assert out[2, 2] == 0 and out[3, 3] == 0
    assert out[6, 6] == 1 and out[6, 7] == 1


def test_classes_restrict_processing():
    m = np.zeros((30, 30), np.uint8)
    m[5:7, 5:7] = 1
    m[20:22, 20:22] = 2
    out = enforce_min_sizes(m, 1.0, 10.0, 10.0, classes=[2])
    assert (out[5:7, 5:7] == 1).all() and (out[20:22, 20:22] == 0).all()


def test_small_regions_bordering_only_small_regions_are_resolved():
    m = np.zeros((20, 20), np.uint8)
    m[9:12, 9:12] = 2  # a ring of 8 px ...
    m[10, 10] = 1  # ... around a 1 px region
    out = enforce_min_sizes(m, 1.0, 10.0, 0.0)
    assert (out == 0).all()


def test_region_without_neighbours_is_kept():
    m = np.full((3, 3), 4, np.uint8)
    np.testing.assert_array_equal(enforce_min_sizes(m, 1.0, 100.0, 100.0), m)


def test_no_region_below_minimum_on_a_noisy_map():
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.random((300, 300)).astype(np.float32), (0, 0), 2)
    m = np.digitize(noise, np.quantile(noise, [0.25, 0.5, 0.75])).astype(np.uint8)
    m[m == 3] = NO_CLASS
    assert min(size for c in (0, 1, 2) for size in _regions(m, c)) < 10
    out = enforce_min_sizes(m, 0.5, 10.0, 0.0)  # 40 px
    for c in (0, 1, 2):
        assert min(_regions(out, c)) >= 40
    # Only pixels of small regions changed; almost all of them did (a few small regions
    # keep their class by joining neighbours relabelled to it).
    small = np.zeros(m.shape, dtype=bool)
    for c in (0, 1, 2):
        labels, _ = ndi.label(m == c)
        sizes = np.bincount(labels.ravel())
        small |= (labels > 0) & (sizes[labels] < 40)
    changed = out != m
    assert not (changed & ~small).any()
    assert changed.sum() > 0.97 * small.sum()
    assert set(np.unique(out)) <= {0, 1, 2, NO_CLASS}


def test_min_sizes_rejects_bad_limits():
    with pytest.raises(InvalidInput):
        enforce_min_sizes(np.zeros((4, 4), np.uint8), 1.0, -1.0, 0.0)
    with pytest.raises(InvalidInput):
        enforce_min_sizes(np.zeros((4, 4), np.uint8), 0.0, 1.0, 0.0)


def test_no_class_constant():
    assert postprocess.NO_CLASS == 255 and "NO_CLASS" in postprocess.__all__


def test_tissue_mask_keeps_tissue_cut_by_a_small_region(slide_image):
    """A small ROI crop of tissue is tissue: objects touching the crop's border may go on
    outside it, so the minimum object size does not remove them."""
    rows, cols = TISSUE_BOXES[0]
    crop = slide_image[rows.start:rows.start + 128, cols.start:cols.start + 128]
    assert tissue_mask(crop, SLIDE_MPP).mean() > 0.9
    speck = _glass((600, 600))
    speck[280:320, 280:320] = crop[:40, :40]  # 20 x 20 µm of tissue inside glass
    assert not tissue_mask(speck, SLIDE_MPP).any()
