"""Box geometry shared by every metric, the manifest's label assignment and the synthetic detector (numpy).

Convention, unless a function says otherwise: boxes are float arrays [..., 4] of corners ``(x1, y1, x2, y2)``
with ``x1 <= x2`` and ``y1 <= y2``, in any unit (AVA's normalised [0, 1] frame coordinates or pixels).
AVA's official evaluator stores ``(y1, x1, y2, x2)``; products and sums are commutative in IEEE arithmetic,
so these functions take either order unchanged (the formulas only pair columns 0/2 and 1/3) and are
bit-identical to its ``np_box_ops.iou``.

``area_offset`` is the references' pixel convention: 0 treats coordinates as continuous (VOC, AVA, MultiSports),
1 counts pixels inclusively (ACT's ``iou2d`` for UCF101-24 and JHMDB: a box from 0 to 9 is 10 pixels wide). The
offset is added inside the ``min`` as ACT does, so with offset 0 every operation equals the VOC formula exactly.
"""

from __future__ import annotations

import numpy as np


def area(boxes: np.ndarray, area_offset: float = 0.0) -> np.ndarray:
    """Area of each box [...]: ``(x2 - x1 + offset) * (y2 - y1 + offset)``; negative for inverted boxes."""
    return (boxes[..., 2] - boxes[..., 0] + area_offset) * (boxes[..., 3] - boxes[..., 1] + area_offset)


def _iou(a: np.ndarray, b: np.ndarray, area_offset: float) -> np.ndarray:
    """IoU of broadcast-compatible box arrays; a zero union gives NaN (the references divide without a guard)."""
    w = np.maximum(0.0, np.minimum(a[..., 2] + area_offset, b[..., 2] + area_offset) - np.maximum(a[..., 0], b[..., 0]))
    h = np.maximum(0.0, np.minimum(a[..., 3] + area_offset, b[..., 3] + area_offset) - np.maximum(a[..., 1], b[..., 1]))
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area(a, area_offset) + area(b, area_offset) - inter)


def iou_pairs(a: np.ndarray, b: np.ndarray, area_offset: float = 0.0) -> np.ndarray:
    """IoU of row i of ``a`` [n, 4] with row i of ``b`` [n, 4] (a single box for ``b`` [4] broadcasts) -> [n].

    Two empty boxes (zero union) give NaN, as in the references; callers that need 0 there use ``nan_to_num``.
    """
    return _iou(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), area_offset)


def iou_matrix(a: np.ndarray, b: np.ndarray, area_offset: float = 0.0) -> np.ndarray:
    """IoU of every box of ``a`` [n, 4] with every box of ``b`` [m, 4] -> [n, m] (torchvision's ``box_iou``)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return _iou(a[:, None, :], b[None, :, :], area_offset)


def clip(boxes: np.ndarray, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Each coordinate clipped to [low, high] (normalised frame coordinates by default); a new array."""
    return np.clip(boxes, low, high)


def enlarge(boxes: np.ndarray, factor: float) -> np.ndarray:
    """Each box scaled by ``factor`` about its centre (PCCA's context box is the actor box enlarged 2x)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = (boxes[..., 2:] - boxes[..., :2]) * factor / 2
    return np.concatenate([centre - half, centre + half], axis=-1)
