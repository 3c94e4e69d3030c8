"""The client's request builders against real image files."""

from __future__ import annotations

import pytest
from conftest import GLAS
from roiseg.client.requests import read_region
from roiseg.io.slides import Slide
from shapely.geometry import box


@pytest.mark.parametrize("downsample", [1.0, 1 / 0.62, 2.37, 7.9])
@pytest.mark.parametrize("roi", [box(100, 80, 500, 400), box(0.4, 3.3, 301.7, 211.9),
                                 box(600, 400, 900, 700)])
def test_the_pixels_read_cover_the_roi(downsample, roi):
    """Shrinking rounds the pixels' size; the extent they cover must still hold the whole ROI,
    or the server clips the ROI (at the image's edge, where no margin can be read, to within
    one pixel)."""
    with Slide.open(GLAS / "images" / "train_10.png") as slide:
        pixels, (x, y), used = read_region(slide, roi, downsample)
        height, width = pixels.shape[:2]
        x0, y0, x1, y1 = roi.intersection(box(0, 0, slide.width, slide.height)).bounds
        assert x <= x0 and y <= y0
        slack_x = used if x1 > slide.width - used else 1e-6
        slack_y = used if y1 > slide.height - used else 1e-6
        assert x + width * used >= x1 - slack_x and y + height * used >= y1 - slack_y
        assert used == pytest.approx(downsample, rel=0.02)
