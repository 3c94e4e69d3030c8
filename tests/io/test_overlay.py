"""Overlay pictures explain themselves: a key of the classes, the coordinates, a scale bar."""

from __future__ import annotations

import numpy as np
import pytest
from roiseg.io import overlay, qupath_geojson
from shapely.geometry import box, mapping

GLAND, OTHER = ("Gland epithelium", (0, 170, 200)), ("Other", (200, 120, 40))


def collection(*classes):
    features = [{"type": "Feature", "geometry": mapping(box(100 + 300 * i, 100, 300 + 300 * i,
                                                            400)),
                 "properties": {"classification": qupath_geojson.classification(name, color)}}
                for i, (name, color) in enumerate(classes)]
    return qupath_geojson.feature_collection(features)


def black_runs(row: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of the runs of pure black pixels in a row of RGB pixels."""
    black = np.r_[False, (row == 0).all(axis=1), False]
    edges = np.flatnonzero(black[1:] != black[:-1])
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


@pytest.mark.parametrize("mpp, downsample, expected_um", [(0.5, 2.0, 200), (0.25, 2.0, 100),
                                                          (2.0, 4.0, 1000)])
def test_a_scale_bar_of_a_round_length_and_a_key_of_the_classes(mpp, downsample, expected_um):
    image = np.full((600, 800, 3), 230, np.uint8)
    picture = overlay.render(image, (1000.0, 2000.0), downsample,
                             {"model": collection(GLAND, OTHER)}, mpp=mpp)
    assert picture.shape == (overlay._TITLE_PX + 600 + overlay.LEGEND_PX, 800, 3)
    panel = picture[overlay._TITLE_PX:overlay._TITLE_PX + 600]
    um_per_px = mpp * downsample
    assert overlay.scale_length_um(um_per_px, 800) == expected_um
    bar_px = round(expected_um / um_per_px)
    rows = [black_runs(row) for row in panel[-20:]]
    assert any((10, bar_px) in runs for runs in rows), "no bar of the right length at lower left"
    # the key: each class's colour as a swatch in the strip under the panel
    legend = picture[-overlay.LEGEND_PX:]
    for _, color in (GLAND, OTHER):
        assert (legend == color).all(axis=2).sum() >= 100, f"no swatch of {color}"
    # without a pixel size: no bar, the key all the same
    plain = overlay.render(image, (1000.0, 2000.0), downsample, {"model": collection(GLAND)})
    assert not any(black_runs(row) for row in plain[overlay._TITLE_PX + 560:-overlay.LEGEND_PX])


def test_the_confidence_picture_has_a_key_and_a_scale_bar():
    image = np.full((300, 400, 3), 230, np.uint8)
    unsure = np.zeros((150, 200), np.uint8)
    unsure[:, 100:] = 200
    picture = overlay.render_confidence(image, (0.0, 0.0), 1.0,
                                        {"m": (unsure, (0.0, 0.0, 2.0, 2.0))}, mpp=0.5)
    legend = picture[-overlay.LEGEND_PX:]
    assert (legend == overlay.UNSURE_COLOR).all(axis=2).sum() >= 100
    panel = picture[overlay._TITLE_PX:-overlay.LEGEND_PX]
    assert any((10, 100) in black_runs(row) for row in panel[-20:])  # 50 µm at 0.5 µm/px


def test_a_catch_all_class_is_outlined_not_washed_over_the_stain():
    """The rest of the tissue (a model's catch-all) leaves the stain as it is: only its outline
    is drawn, and the key shows an outlined swatch named so; a target class is filled."""
    image = np.full((500, 700, 3), (200, 120, 170), np.uint8)  # an H&E-like pink
    picture = overlay.render(image, (0.0, 0.0), 1.0, {"model": collection(GLAND, OTHER)},
                             outlined={OTHER[0]})
    panel = picture[overlay._TITLE_PX:-overlay.LEGEND_PX]
    gland_inside, other_inside = panel[150:350, 150:250], panel[150:350, 450:550]
    assert (other_inside == image[0, 0]).all(), "the catch-all's inside is not the image's"
    assert (np.abs(gland_inside.astype(int) - image[0, 0]).sum(axis=2) > 60).all()
    # its outline is drawn, in its colour
    assert (np.abs(panel[150:350, 398:403].astype(int) - OTHER[1]).sum(axis=2) < 60).any()
    legend = picture[-overlay.LEGEND_PX:]
    for (_, color), filled in ((GLAND, True), (OTHER, False)):
        rows, columns = np.nonzero((legend == color).all(axis=2))
        assert rows.size >= 50, f"no swatch of {color}"
        middle = legend[(rows.min() + rows.max()) // 2, (columns.min() + columns.max()) // 2]
        assert (middle == color).all() == filled and (filled or (middle == 255).all())
