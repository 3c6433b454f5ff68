"""stages.metrics.boxes against slow per-box loops written from the references' formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

from stages.metrics import boxes


def _loop_iou(a: list[float], b: list[float], offset: float) -> float:
    """One pair, the ACT ``iou2d`` / VOC formula written out with Python floats."""
    w = max(0.0, min(a[2] + offset, b[2] + offset) - max(a[0], b[0]))
    h = max(0.0, min(a[3] + offset, b[3] + offset) - max(a[1], b[1]))
    inter = w * h
    area_a = (a[2] - a[0] + offset) * (a[3] - a[1] + offset)
    area_b = (b[2] - b[0] + offset) * (b[3] - b[1] + offset)
    union = area_a + area_b - inter
    return math.nan if union == 0 else inter / union


def _ava_reference_iou(det: list[float], gt: list[float]) -> float:
    """ActivityNet's ``np_box_ops.iou`` for one [y1, x1, y2, x2] pair: heights first, then widths."""
    ih = max(0.0, min(det[2], gt[2]) - max(det[0], gt[0]))
    iw = max(0.0, min(det[3], gt[3]) - max(det[1], gt[1]))
    inter = ih * iw
    area_d = (det[2] - det[0]) * (det[3] - det[1])
    area_g = (gt[2] - gt[0]) * (gt[3] - gt[1])
    union = area_d + area_g - inter
    return math.nan if union == 0 else inter / union  # numpy's 0/0


_coord = st.floats(0.0, 1.0, allow_nan=False, width=64)


@st.composite
def _box_arrays(draw: st.DrawFn, n: int) -> np.ndarray:
    rows = []
    for _ in range(n):
        x1, x2 = sorted((draw(_coord), draw(_coord)))
        y1, y2 = sorted((draw(_coord), draw(_coord)))
        rows.append([x1, y1, x2, y2])
    return np.array(rows, dtype=np.float64).reshape(n, 4)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8).flatmap(lambda n: st.tuples(_box_arrays(n), _box_arrays(n))), st.sampled_from([0.0, 1.0]))
def test_iou_pairs_equals_the_loop_bit_for_bit(pair: tuple[np.ndarray, np.ndarray], offset: float) -> None:
    a, b = pair
    if offset:
        a, b = a * 100, b * 100  # pixel boxes for the inclusive convention
    got = boxes.iou_pairs(a, b, offset)
    want = [_loop_iou(list(x), list(y), offset) for x, y in zip(a, b, strict=True)]
    np.testing.assert_array_equal(got, np.array(want))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8).flatmap(lambda n: st.tuples(_box_arrays(n), _box_arrays(n))))
def test_iou_pairs_is_bit_identical_to_ava_reference_in_its_y_first_order(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = (x[:, [1, 0, 3, 2]] for x in pair)  # the reference's [y1, x1, y2, x2]
    want = [_ava_reference_iou(list(d), list(g)) for d, g in zip(a, b, strict=True)]
    np.testing.assert_array_equal(boxes.iou_pairs(a, b), np.array(want))  # NaN where both are empty, as there


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 6).flatmap(_box_arrays), st.integers(0, 6).flatmap(_box_arrays))
def test_iou_matrix_equals_loop_and_torchvision(a: np.ndarray, b: np.ndarray) -> None:
    got = boxes.iou_matrix(a, b)
    assert got.shape == (len(a), len(b))
    want = np.array([[_loop_iou(list(x), list(y), 0.0) for y in b] for x in a]).reshape(len(a), len(b))
    np.testing.assert_array_equal(got, want)
    finite = np.isfinite(want)
    tv = box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_array_equal(got[finite], tv[finite])


def test_hand_built_cases() -> None:
    unit = np.array([0.0, 0.0, 1.0, 1.0])
    half = np.array([0.5, 0.0, 1.5, 1.0])  # overlaps the unit box on a 0.5 x 1 strip: 0.5 / 1.5
    apart = np.array([2.0, 2.0, 3.0, 3.0])
    got = boxes.iou_pairs(np.stack([unit, unit, unit]), np.stack([unit, half, apart]))
    np.testing.assert_allclose(got, [1.0, 1 / 3, 0.0])
    # ACT's inclusive pixels: 0..9 and 5..14 overlap on pixels 5..9 (5 of 10 each): 50 / (100 + 100 - 50)
    np.testing.assert_allclose(boxes.iou_pairs(np.array([[0, 0, 9, 9]]), np.array([5, 0, 14, 9]), 1.0), [1 / 3])
    assert np.isnan(boxes.iou_pairs(np.zeros((1, 4)), np.zeros((1, 4))))[0]
    np.testing.assert_array_equal(boxes.area(np.array([[0, 0, 9, 9]]), 1.0), [100.0])


def test_clip_and_enlarge() -> None:
    b = np.array([[-0.2, 0.1, 0.5, 1.3]])
    np.testing.assert_array_equal(boxes.clip(b), [[0.0, 0.1, 0.5, 1.0]])
    np.testing.assert_array_equal(b, [[-0.2, 0.1, 0.5, 1.3]])  # the input is untouched
    np.testing.assert_allclose(boxes.enlarge(np.array([[1.0, 2.0, 3.0, 6.0]]), 2.0), [[0.0, 0.0, 4.0, 8.0]])
    big = boxes.enlarge(np.array([[0.2, 0.2, 0.4, 0.6]]), 3.0)
    np.testing.assert_allclose(boxes.area(big), 9 * boxes.area(np.array([0.2, 0.2, 0.4, 0.6])))


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_single_box_broadcasts(offset: float) -> None:
    many = np.array([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 2.0, 2.0]])
    one = np.array([1.0, 1.0, 3.0, 3.0])
    stacked = np.stack([one, one])
    np.testing.assert_array_equal(boxes.iou_pairs(many, one, offset), boxes.iou_pairs(many, stacked, offset))
