"""Random manifests and stores for tests and benchmarks (like ``numpy.testing``: not used by the pipeline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cache_spec.store import Store, create_store
from cache_spec.views import get_view


def random_manifest(
    n_clips: int, max_boxes: int = 4, seed: int = 0, canvas: tuple[int, int] = (128, 160)
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A valid clips/boxes manifest with 0..max_boxes boxes per clip, mixed gt/det sources."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, max_boxes + 1, n_clips)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    clips = pd.DataFrame(
        {
            "clip_index": np.arange(n_clips),
            "video_id": [f"v{i // 10:03d}" for i in range(n_clips)],
            "timestamp": np.arange(n_clips) % 10 + 1,
            "frame_h": 120,
            "frame_w": 160,
            "valid_h": canvas[0] // 16,
            "valid_w": canvas[1] // 16,
            "box_start": starts,
            "box_count": counts,
        }
    )
    n = int(counts.sum())
    xy = np.sort(rng.uniform(0, 1, (n, 2, 2)), axis=1)  # [n, (lo, hi), (x, y)]
    boxes = pd.DataFrame(
        {
            "box_index": np.arange(n),
            "clip_index": np.repeat(np.arange(n_clips), counts),
            "x1": xy[:, 0, 0],
            "y1": xy[:, 0, 1],
            "x2": xy[:, 1, 0] + 1e-3,
            "y2": xy[:, 1, 1] + 1e-3,
        }
    )
    for norm, cells, size in (("x1", "fx1", 10), ("y1", "fy1", 7.5), ("x2", "fx2", 10), ("y2", "fy2", 7.5)):
        boxes[cells] = boxes[norm] * size
    boxes["source"] = np.where(rng.uniform(size=n) < 0.5, "gt", "det")
    boxes["score"] = np.where(boxes["source"] == "gt", 1.0, rng.uniform(0.3, 1.0, n))
    boxes["person_id"] = np.where(boxes["source"] == "gt", rng.integers(0, 5, n), -1)
    boxes["labels"] = [list(rng.choice([1, 2, 3, 4], size=rng.integers(1, 3), replace=False)) for _ in range(n)]
    return clips, boxes


def fill_store(store: Store, seed: int = 0) -> dict[str, np.ndarray]:
    """Write every shard with random data; returns the full arrays written, per view."""
    rng = np.random.default_rng(seed)
    full = {}
    for view in store.views:
        n = len(store.clips) if get_view(view).rows == "clips" else len(store.boxes)
        full[view] = np.maximum(rng.standard_normal((n, *store.row_shape(view)), np.float32), 0).astype(store.dtype)
    for rng_ in store.shards:
        store.write_shard(rng_.shard, {v: full[v][slice(*rng_.rows(get_view(v).rows))] for v in store.views})
    return full


def random_store(
    path: Path,
    n_clips: int,
    channels: int = 32,
    map_hw: tuple[int, int] = (8, 10),
    clips_per_shard: int = 16,
    views: tuple[str, ...] = ("roi_pooled", "context_map"),
    seed: int = 0,
    max_boxes: int = 4,
) -> tuple[Store, dict[str, np.ndarray]]:
    """A complete store of random ReLU'd noise and the arrays it holds."""
    clips, boxes = random_manifest(n_clips, max_boxes=max_boxes, seed=seed)
    store = create_store(
        path,
        fingerprint={"backbone": "random", "seed": seed},
        dims={"C": channels, "H": map_hw[0], "W": map_hw[1]},
        views=views,
        clips=clips,
        boxes=boxes,
        clips_per_shard=clips_per_shard,
    )
    return store, fill_store(store, seed)
