"""The view registry: every named array a store can hold, over which row space, with which per-row shape.

A view's per-row shape is written with symbolic dimensions (``C`` channels of the pooled map, ``C_s`` /
``C_f`` of the slow / fast pathway, ``H`` / ``W`` of the padded feature map, ``T_s`` / ``T_f`` frames) that a
store resolves from its own dimensions, so heads can name views without knowing a backbone's channel count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

RowSpace = Literal["clips", "boxes"]
Source = Literal["store", "manifest"]

ROI_POOLED = "roi_pooled"
ROI_SPATIAL = "roi_spatial"
ROI_TEMPORAL = "roi_temporal"
CONTEXT_EXT = "context_ext"
CONTEXT_MAP = "context_map"
SLOW_TPOOL = "slow_tpool"
FAST_SPOOL = "fast_spool"
SLOW_FULL = "slow_full"
FAST_FULL = "fast_full"
BOX_ON_MAP = "box_on_map"
CLIP_EXTENT = "clip_extent"


@dataclass(frozen=True)
class ViewSpec:
    """One view: its row space, symbolic per-row shape, and what it is for.

    ``source`` is ``store`` for arrays extraction writes, ``manifest`` for the small geometric views the reader
    derives from the manifest (so every store has them, whatever it was extracted for).
    """

    name: str
    rows: RowSpace
    dims: tuple[str | int, ...]
    description: str
    source: Source = "store"

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """Per-row shape with the symbolic dimensions replaced by ``sizes``."""
        missing = [d for d in self.dims if isinstance(d, str) and d not in sizes]
        if missing:
            raise KeyError(f"view {self.name!r} needs dimension(s) {missing}; store has {sorted(sizes)}")
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.dims)


VIEWS: dict[str, ViewSpec] = {
    v.name: v
    for v in (
        ViewSpec(ROI_POOLED, "boxes", ("C",), "RoIAlign 7x7 of the pooled map, spatial max: the actor vector"),
        ViewSpec(ROI_SPATIAL, "boxes", ("C", 7, 7), "RoIAlign 7x7 of the pooled map, no spatial pooling"),
        ViewSpec(ROI_TEMPORAL, "boxes", ("C", "T_s"), "per-frame RoI features, fast pooled to the slow T"),
        ViewSpec(CONTEXT_EXT, "boxes", ("C", 9, 9), "RoIAlign 9x9 over the box enlarged 2x"),
        ViewSpec(CONTEXT_MAP, "clips", ("C", "H", "W"), "temporally pooled slow+fast map, padded"),
        ViewSpec(SLOW_TPOOL, "clips", ("C_s", "H", "W"), "slow map pooled over time"),
        ViewSpec(FAST_SPOOL, "clips", ("C_f", "T_f"), "fast map pooled over space"),
        ViewSpec(SLOW_FULL, "clips", ("C_s", "T_s", "H", "W"), "full slow map (large, opt-in)"),
        ViewSpec(FAST_FULL, "clips", ("C_f", "T_f", "H", "W"), "full fast map (large, opt-in)"),
        ViewSpec(BOX_ON_MAP, "boxes", (4,), "box x1, y1, x2, y2 in feature-map cells", "manifest"),
        ViewSpec(CLIP_EXTENT, "clips", (2,), "rows, columns of the map that hold image (rest is padding)", "manifest"),
    )
}


def get_view(name: str) -> ViewSpec:
    """The registered view called ``name``, or a KeyError listing the known ones."""
    try:
        return VIEWS[name]
    except KeyError:
        raise KeyError(f"unknown view {name!r}; known views: {', '.join(VIEWS)}") from None


def manifest_view(name: str, clips: pd.DataFrame, boxes: pd.DataFrame) -> np.ndarray:
    """A manifest-derived view over all rows of its row space (float32)."""
    if name == BOX_ON_MAP:
        return boxes[["fx1", "fy1", "fx2", "fy2"]].to_numpy(np.float32)
    if name == CLIP_EXTENT:
        return clips[["valid_h", "valid_w"]].to_numpy(np.float32)
    raise KeyError(f"{name!r} is not a manifest view")
