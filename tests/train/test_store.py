"""A correction's labels (roiseg.train.store.parse_corrections): what it leaves of its ROI is the
model's catch-all class when it holds none of it, else unlabelled."""

from __future__ import annotations

import json

import pytest
from roiseg.train.store import parse_corrections
from roiseg.train.training import class_specs, in_memory_card
from shapely.geometry import Polygon, box, mapping

GLAND, OTHER = "Gland epithelium", "Other tissue"
ROI = Polygon([(0, 0), (100, 0), (100, 100), (0, 100)], [[(40, 40), (60, 40), (60, 60), (40, 60)]])


def _corrections(*objects: tuple[str, Polygon]) -> str:
    return json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": mapping(geometry),
         "properties": {"objectType": "annotation", "classification": {"name": name}}}
        for name, geometry in objects]})


def _card(catch_all: tuple[str, ...]):
    return in_memory_card(class_specs([OTHER, GLAND], catch_all=catch_all))


def test_glands_only_label_the_rest_of_the_roi_with_the_catch_all():
    gland = box(10, 10, 30, 30)
    labels = parse_corrections(_corrections((GLAND, gland)), _card((OTHER,)), ROI)
    assert labels.rest_of_roi == OTHER
    (first_name, rest), (name, kept) = labels.annotations
    assert (first_name, name) == (OTHER, GLAND) and kept.equals(gland)
    assert rest.equals(ROI.difference(gland))  # the ROI (its hole left out) less the gland
    assert rest.area + kept.area == pytest.approx(ROI.area)


@pytest.mark.parametrize("catch_all, objects", [
    ((OTHER,), ((GLAND, box(10, 10, 30, 30)), (OTHER, box(70, 70, 90, 90)))),  # some given
    ((), ((GLAND, box(10, 10, 30, 30)),)),  # a model without a catch-all
    ((OTHER,), ((GLAND, box(-10, -10, 110, 110)),)),  # nothing left of the ROI
])
def test_otherwise_what_no_correction_covers_stays_unlabelled(catch_all, objects):
    labels = parse_corrections(_corrections(*objects), _card(catch_all), ROI)
    assert labels.rest_of_roi is None
    assert [name for name, _ in labels.annotations] == [name for name, _ in objects]
