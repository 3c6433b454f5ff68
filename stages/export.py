"""Export chosen views of a store to an HDF5 feature file (the layout of ``stages.data.hdf5``), for other tools.

The file is what ``import-features`` reads, so an exported split imports back to the same store rows and values.
Its ``extractor`` attribute names what made the features (the backbone, its weights and a digest of every
fingerprint field that decides what the features mean), the same for the train and val stores of one extraction,
so their exports import as one extractor's features.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cache_spec import views as V
from cache_spec.errors import InputError
from cache_spec.store import Store, StoreError, open_store
from stages.data.hdf5 import RowKeys, write_feature_file
from stages.models.trained_head import PER_STORE_FIELDS

log = logging.getLogger(__name__)


class ExportError(InputError, ValueError):
    """Views that cannot be exported (unknown, or not in the store)."""


@dataclass(frozen=True)
class ExportConfig:
    """Which store, which of its views (empty: every stored view) and where the file goes."""

    store: Path
    out: Path
    views: tuple[str, ...] = ()


@dataclass
class ExportSummary:
    out: Path
    boxes: int
    clips: int
    views: list[str]
    skipped_clips: int  # clips whose video failed in extraction (zeros in the store): left out of the file


def extractor_name(store: Store) -> str:
    """What made a store's features, as the ``extractor`` attribute: an imported store's own extractor, else the
    backbone, weights and a digest of the fingerprint fields evaluate compares (equal for train and val)."""
    fp = store.fingerprint
    if fp.get("backbone") == "imported":
        return str(fp.get("weights", "unspecified"))
    meaning = {k: v for k, v in fp.items() if k not in PER_STORE_FIELDS}
    digest = hashlib.sha256(json.dumps(meaning, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"stcache extract: backbone {fp.get('backbone')}, weights {fp.get('weights')}, features {digest}"


def export(config: ExportConfig, progress: Callable[..., Any] = tqdm) -> ExportSummary:
    """Write the chosen views of ``config.store`` to ``config.out``, shard by shard (memory: one shard)."""
    store = open_store(config.store)
    views = list(config.views) or list(store.views)
    for view in views:
        try:
            spec = V.get_view(view)
        except KeyError as err:
            raise ExportError(f"cannot export {view!r}: {err.args[0]}") from None
        if spec.source == "store" and view not in store.views:
            raise ExportError(
                f"store {store.path} has no view {view!r} (it holds {', '.join(store.views)}); extract it first "
                f"(`pipeline extract{store.cli_args} --heads <a head that reads it>`)"
            )
    missing = store.missing_shards()
    if missing:
        raise StoreError(
            f"store {store.path} is incomplete: {len(missing)} of {store.num_shards} shards missing; finish it first"
        )
    failed = store.failed_clips()
    keep_clip = np.ones(len(store.clips), bool)
    keep_clip[failed] = False
    if len(failed):
        log.warning(
            "%s: %d clips failed in extraction and hold zeros; their clips and boxes are left out of %s",
            store.path,
            len(failed),
            config.out,
        )
    clip_of_box = store.boxes["clip_index"].to_numpy()
    keep_box = keep_clip[clip_of_box]
    video = store.clips["video_id"].to_numpy().astype(object)
    timestamp = store.clips["timestamp"].to_numpy(np.int64)
    by_space = {space: [v for v in views if V.get_view(v).rows == space] for space in ("boxes", "clips")}
    box_keys = clip_keys = None
    extras: dict[str, np.ndarray] = {}
    if by_space["boxes"]:
        box_keys = RowKeys(
            video[clip_of_box][keep_box],
            timestamp[clip_of_box][keep_box],
            store.boxes[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)[keep_box],
        )
        extras = {
            "source": store.boxes["source"].to_numpy().astype(object)[keep_box],
            "score": store.boxes["score"].to_numpy(np.float32)[keep_box],
            "person_id": store.boxes["person_id"].to_numpy(np.int64)[keep_box],
        }
    if by_space["clips"]:
        clip_keys = RowKeys(video[keep_clip], timestamp[keep_clip])
    shapes = {v: (store.row_shape(v), store.dtype if V.get_view(v).source == "store" else "float32") for v in views}
    attrs = {"extractor": extractor_name(store), "store_fingerprint": json.dumps(store.fingerprint, default=str)}
    derived = {v: V.manifest_view(v, store.clips, store.boxes) for v in views if V.get_view(v).source == "manifest"}
    with write_feature_file(
        config.out, attrs=attrs, boxes=box_keys, clips=clip_keys, views=shapes, box_extras=extras
    ) as writer:
        start = {"boxes": 0, "clips": 0}
        with progress(total=store.num_shards, unit="shard", desc=f"export {store.path.name}") as bar:
            for shard in range(store.num_shards):
                rng = store.shards[shard]
                for space, keep in (("boxes", keep_box), ("clips", keep_clip)):
                    lo, hi = rng.rows(space)
                    rows = np.flatnonzero(keep[lo:hi])
                    for view in by_space[space]:
                        data = derived[view][lo:hi] if view in derived else store.read_shard(view, shard, mmap=True)
                        writer.write(view, start[space], np.asarray(data[rows]))
                    start[space] += len(rows)
                bar.update(1)
    log.info("%s: %s of %d boxes and %d clips written", config.out, ", ".join(views), start["boxes"], start["clips"])
    return ExportSummary(config.out, start["boxes"], start["clips"], views, len(failed))
