"""Prompt validation: every bad prompt has one defined behaviour (see ovsam_ros.prompts)."""

import numpy as np
import pytest

from ovsam_ros.prompts import Prompt, PromptError, check_prompt

SIZE = (100, 200)  # height, width


def test_points_default_to_positive_and_single_pair_is_accepted():
    checked = check_prompt(Prompt(points=[10, 20]), SIZE)
    assert checked.points.tolist() == [[10.0, 20.0]] and checked.point_labels.tolist() == [1]


@pytest.mark.parametrize("point", [[np.nan, 5], [5, np.inf], [-np.inf, 0]])
def test_non_finite_points_are_rejected(point):
    with pytest.raises(PromptError, match="prompt 3: point coordinates must be finite"):
        check_prompt(Prompt(points=[point]), SIZE, index=3)


@pytest.mark.parametrize("point", [[-1, 5], [201, 5], [5, 101]])
def test_points_outside_the_image_are_rejected(point):
    with pytest.raises(PromptError, match="outside the 200x100 image"):
        check_prompt(Prompt(points=[point]), SIZE)


def test_points_on_the_border_are_inside():
    assert check_prompt(Prompt(points=[[0, 0], [200, 100]]), SIZE).points.shape == (2, 2)


def test_box_partly_outside_is_clipped_and_inverted_box_reordered():
    assert check_prompt(Prompt(box=[-10, -5, 50, 500]), SIZE).box.tolist() == [0, 0, 50, 100]
    assert check_prompt(Prompt(box=[50, 60, 10, 20]), SIZE).box.tolist() == [10, 20, 50, 60]


@pytest.mark.parametrize("box, match", [
    ([300, 10, 400, 50], "no area inside"),
    ([10, 10, 10, 50], "no area inside"),
    ([0, 0, np.nan, 5], "must be finite"),
    ([1, 2, 3], "box must be"),
])
def test_unusable_boxes_are_rejected(box, match):
    with pytest.raises(PromptError, match=match):
        check_prompt(Prompt(box=box), SIZE)


def test_labels_must_match_points_and_be_binary():
    with pytest.raises(PromptError, match="2 points but 1 point labels"):
        check_prompt(Prompt(points=[[1, 1], [2, 2]], point_labels=[1]), SIZE)
    with pytest.raises(PromptError, match="must be 1 \\(positive\\) or 0"):
        check_prompt(Prompt(points=[[1, 1]], point_labels=[-1]), SIZE)


def test_empty_prompt_is_rejected():
    with pytest.raises(PromptError, match="needs at least one point or a box"):
        check_prompt(Prompt(points=[]), SIZE)
