"""Import RoI features another extractor wrote (HDF5, see ``stages.data.hdf5``) into a store, so heads train on them.

The store's rows are the split's manifest, built from the data set exactly as ``extract`` builds it (same boxes,
same order, same shards), and each manifest box takes the file row of its keyframe whose box matches. So
``train-head`` and ``evaluate`` read an imported store unchanged, and a head trained on imported train features
evaluates on imported val features of the same extractor (the fingerprint's ``backbone: imported`` and
``weights``, the file's extractor, are what evaluate compares). The file's SHA-256 is kept in ``imported.json``
beside the arrays: a changed file is imported afresh, the same file resumes (or does nothing when complete).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from cache_spec import views as V
from cache_spec.errors import InputError
from cache_spec.store import Store, StoreError, StoreMismatchError, create_store, lock_store, open_store
from stages.data.hdf5 import (
    DEFAULT_TOLERANCE,
    LAYOUT,
    LAYOUT_VERSION,
    FeatureFile,
    Match,
    checked_block,
    file_digest,
    match_rows,
    open_feature_file,
)
from stages.data.manifest import ManifestSpec, build_manifest
from stages.data.video import ClipSampling

log = logging.getLogger(__name__)

IMPORTED = "imported"  # the fingerprint's backbone of an imported store
RECORD = "imported.json"  # in the store: which file it was imported from (its SHA-256), and the row counts


class ImportRefusedError(InputError, RuntimeError):
    """The target path holds a store this import did not write (an extracted one): it is never replaced."""


@dataclass(frozen=True)
class ImportConfig:
    """Which file, which rows (the manifest of a split, as extract builds it) and how the store is laid out."""

    features: Path
    out: Path
    manifest: ManifestSpec
    sampling: ClipSampling = field(default_factory=ClipSampling)  # places boxes on the map (box_on_map)
    stride: int = 16  # backbone stride of that map
    extractor: str | None = None  # names the extractor where the file has no `extractor` attribute (overrides it)
    box_tolerance: float = DEFAULT_TOLERANCE  # a file box matches a manifest box within this, per coordinate
    allow_extra: bool = False  # accept rows of videos the split does not have (a file of several splits)
    allow_missing: bool = False  # unreadable videos: their frame size (map geometry only) is 0 instead of an error
    dtype: Literal["float16", "float32"] = "float16"
    clips_per_shard: int = 128


@dataclass
class ImportSummary:
    store: Path
    clips: int
    boxes: int
    views: list[str]
    file_rows: int
    extra_rows: int
    shards_written: int
    shards_skipped: int
    sha256: str


def fingerprint(config: ImportConfig, extractor: str) -> dict[str, Any]:
    """The fields of an imported store: which rows (as extract's), and which extractor made the features.

    ``weights`` is the extractor's name, the same for the train and val files of one extractor, so evaluate accepts
    the pair and refuses a head trained on other features. The file's own digest differs between those files, so
    it lives in ``imported.json``, not here (evaluate compares every fingerprint field but the per-store ones).
    """
    spec = config.manifest
    return {
        "split": spec.split,
        "dataset": spec.dataset,
        "keyframe_stride": spec.keyframe_stride,
        "backbone": IMPORTED,
        "weights": extractor,
        "features_layout": f"{LAYOUT}/{LAYOUT_VERSION}",
        "box_geometry": {
            "short_side": config.sampling.short_side,
            "canvas": list(config.sampling.canvas),
            "stride": config.stride,
        },
        "box_sources": list(spec.box_sources),
        "predicted_boxes": str(spec.predicted_boxes or "data_dir"),
        "det_threshold": spec.det_threshold,
        "label_iou": spec.label_iou,
    }


def import_features(config: ImportConfig, progress: Callable[..., Any] = tqdm) -> ImportSummary:
    """Build the split's store from an HDF5 feature file; every manifest box must find its row.

    The file's keys, shapes and dtypes are checked and its rows matched before the store is touched, so such a
    file never damages an existing store. Values (NaN/Inf, beyond float16) are checked as shards are written: a
    store stopped by one stays incomplete (train-head refuses it) until a fixed file is imported.
    """
    if config.box_tolerance < 0:
        raise ValueError(f"box_tolerance must be >= 0, got {config.box_tolerance}")
    geometry = {"H": config.sampling.canvas[0] // config.stride, "W": config.sampling.canvas[1] // config.stride}
    with open_feature_file(config.features, geometry) as features:
        clips, boxes = build_manifest(config.manifest, config.sampling, config.stride, False, config.allow_missing)
        match = match_rows(
            features,
            clips,
            boxes,
            split=config.manifest.split,
            tolerance=config.box_tolerance,
            allow_extra=config.allow_extra,
        )
        extractor = _extractor(config, features)
        digest = file_digest(config.features)
        with lock_store(config.out):
            store = _target_store(config, features, clips, boxes, extractor, digest)
            todo = store.missing_shards()
            _write_record(store, config, features, match, extractor, digest)
            with progress(total=len(todo), unit="shard", desc=f"import {config.manifest.split}") as bar:
                for shard in todo:
                    store.write_shard(shard, _shard_arrays(store, shard, features, match))
                    bar.update(1)
    rows = (0 if features.boxes is None else len(features.boxes)) + (
        0 if features.clips is None else len(features.clips)
    )
    summary = ImportSummary(
        store.path,
        len(store.clips),
        len(store.boxes),
        list(store.views),
        rows,
        match.extra_boxes + match.extra_clips,
        len(todo),
        store.num_shards - len(todo),
        digest,
    )
    if not todo:
        log.info("%s already holds the features of %s (sha256 %s): nothing to do", store.path, config.features, digest)
    return summary


def _extractor(config: ImportConfig, features: FeatureFile) -> str:
    """The extractor's name: the config's (CLI --extractor), else the file's attribute, else "unspecified"."""
    if config.extractor:
        if features.extractor and features.extractor != config.extractor:
            log.warning(
                "%s: the file names its extractor %r; using %r as asked",
                config.features,
                features.extractor,
                config.extractor,
            )
        return config.extractor
    if features.extractor:
        return features.extractor
    log.warning(
        "%s names no extractor (root attribute `extractor`): its store cannot be told apart from other unnamed "
        "imports, so a head trained on one extractor's features would be scored on another's; pass --extractor",
        config.features,
    )
    return "unspecified"


def _target_store(
    config: ImportConfig, features: FeatureFile, clips: Any, boxes: Any, extractor: str, digest: str
) -> Store:
    """The store to fill: resumed when it was imported from this very file with this configuration, else written
    afresh (an earlier import of another file is replaced; an extracted store is refused)."""
    out = config.out
    record = _read_record(out)
    if out.is_dir() and any(out.iterdir()):
        try:
            backbone = open_store(out).fingerprint.get("backbone")
        except StoreError:
            backbone = IMPORTED if record is not None else None
        if backbone != IMPORTED:
            raise ImportRefusedError(
                f"{out} holds a store that import-features did not write (backbone {backbone!r}): importing "
                f"{config.features} would replace those features; delete {out} first, or set paths.cache elsewhere"
            )
        if record is None or record.get("sha256") != digest:
            log.warning("%s was imported from another file; importing %s afresh", out, config.features)
            shutil.rmtree(out)
    kwargs: dict[str, Any] = {
        "fingerprint": fingerprint(config, extractor),
        "dims": features.dims,
        "views": list(features.views),
        "clips": clips,
        "boxes": boxes,
        "clips_per_shard": config.clips_per_shard,
        "dtype": config.dtype,
    }
    try:
        return create_store(out, **kwargs)
    except StoreMismatchError as err:
        log.warning("%s was imported with other settings (%s); importing afresh", out, " ".join(str(err).split()))
        shutil.rmtree(out)
        return create_store(out, **kwargs)


def _read_record(out: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((out / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_record(
    store: Store, config: ImportConfig, features: FeatureFile, match: Match, extractor: str, digest: str
) -> None:
    """``imported.json``: the file (path, size, SHA-256) and extractor the store's features come from."""
    record = {
        "file": str(config.features),
        "bytes": config.features.stat().st_size,
        "sha256": digest,
        "extractor": extractor,
        "views": {view: key for view, key in features.views.items()},
        "box_rows": 0 if features.boxes is None else len(features.boxes),
        "clip_rows": 0 if features.clips is None else len(features.clips),
        "extra_box_rows": match.extra_boxes,
        "extra_clip_rows": match.extra_clips,
    }
    tmp = store.path / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(store.path / RECORD)


def _shard_arrays(store: Store, shard: int, features: FeatureFile, match: Match) -> dict[str, Any]:
    """Every view of one shard, gathered from the file rows its clips and boxes matched."""
    rng = store.shards[shard]
    arrays = {}
    for view in store.views:
        by_clip = V.get_view(view).rows == "clips"
        lo, hi = rng.rows("clips" if by_clip else "boxes")
        rows = (match.clip_rows if by_clip else match.box_rows)[lo:hi]
        arrays[view] = checked_block(features, view, rows, store.dtype)
    return arrays
