"""Match pictures: markers land where the points are, in one colour per match; heatmaps follow the map."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ditf_core.matching.draw import draw_matches, heatmap_overlay, point_colours


def test_colours_are_distinct_and_stable():
    colours = point_colours(12)
    assert len(set(colours)) == 12
    assert point_colours(3) == colours[:3]


def test_markers_sit_on_the_points_in_matching_colours():
    source, target = Image.new("RGB", (100, 80), (40, 40, 40)), Image.new("RGB", (60, 80), (40, 40, 40))
    src = torch.tensor([[10.0, 10.0], [70.0, 50.0]])
    trg = torch.tensor([[50.0, 20.0], [5.0, 70.0]])
    picture = np.asarray(draw_matches(source, target, src, trg, gap=8, lines=False))
    assert picture.shape == (80, 168, 3)
    for i, colour in enumerate(point_colours(2)):
        assert tuple(picture[int(src[i, 1]), int(src[i, 0])]) == colour
        assert tuple(picture[int(trg[i, 1]), int(trg[i, 0]) + 108]) == colour


def test_invalid_points_get_no_match_marker():
    image = Image.new("RGB", (50, 50), (40, 40, 40))
    picture = np.asarray(
        draw_matches(image, image, torch.tensor([[25.0, 25.0]]), torch.tensor([[25.0, 25.0]]),
                     valid=torch.tensor([False]), gap=0)
    )
    assert tuple(picture[25, 75]) == (40, 40, 40)  # nothing drawn in the target
    assert tuple(picture[25, 25]) == (40, 40, 40)  # hollow marker on the source: centre untouched


def test_heatmap_is_red_at_the_peak_and_blue_at_the_floor():
    heat = torch.zeros(4, 4)
    heat[0, 0] = 1.0
    overlay = np.asarray(heatmap_overlay(Image.new("RGB", (40, 40), (0, 0, 0)), heat, alpha=1.0)).astype(int)
    assert overlay[1, 1, 0] > 200 and overlay[1, 1, 2] < 60  # red where the map peaks
    assert overlay[38, 38, 2] > 200 and overlay[38, 38, 0] < 60  # blue where it is lowest
