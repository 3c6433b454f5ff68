"""The store: a Zarr v3 group of per-shard view arrays, a Parquet manifest and per-shard completion records.

Layout of ``<name>.zarr/``::

    zarr.json                       group attributes: spec version, fingerprint, dims, views, sharding
    manifest/clips.parquet          the clip row space (one keyframe each)
    manifest/boxes.parquet          the box row space, contiguous per clip
    views/<view>/<shard>/           one Zarr array per (view, shard), stored as ONE chunk
    done/<shard>.json               completion record, written last and atomically
    failures.parquet                clips whose video could not be decoded (optional)

Why one array per shard with one chunk: zarr 3.1 costs about 1 ms per chunk read whatever its size, and two
writers touching one shard lose rows (design §3). A shard is a contiguous run of clips (and so of boxes),
written in one go by exactly one writer, so a reader fetches few, large, sequential files and parallel
writers never share a file. The done record makes extraction resumable: a shard without one is rewritten.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import zarr

from cache_spec import manifest as mf
from cache_spec.errors import InputError
from cache_spec.views import get_view

log = logging.getLogger(__name__)

SPEC_VERSION = "1.0"
DTYPES = ("float16", "float32")


class StoreError(InputError, RuntimeError):
    """A store that cannot be used as asked (missing, incomplete, corrupt)."""


class StoreMismatchError(StoreError):
    """A store written by another spec version or configuration than the one asked for."""


def fingerprint_differences(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Human-readable list of fields where two fingerprints differ (empty if equal)."""
    diffs = []
    for key in sorted(set(stored) | set(expected)):
        a, b = stored.get(key, "<absent>"), expected.get(key, "<absent>")
        if _canonical(a) != _canonical(b):
            diffs.append(f"{key}: store has {a!r}, asked for {b!r}")
    return diffs


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class ShardRange:
    """The clip and box rows a shard covers."""

    shard: int
    clip_start: int
    clip_stop: int
    box_start: int
    box_stop: int

    def rows(self, row_space: str) -> tuple[int, int]:
        return (self.clip_start, self.clip_stop) if row_space == "clips" else (self.box_start, self.box_stop)


class Store:
    """An opened store. Create with :func:`create_store`, open with :func:`open_store`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        group = zarr.open_group(str(self.path), mode="r")
        attrs: dict[str, Any] = dict(group.attrs)
        self.spec_version: str = attrs["spec_version"]
        self.fingerprint: dict[str, Any] = attrs["fingerprint"]
        self.dims: dict[str, int] = attrs["dims"]
        self.dtype: str = attrs["dtype"]
        self.views: list[str] = list(attrs["views"])
        self.clips_per_shard: int = attrs["clips_per_shard"]
        self.clips = pd.read_parquet(self.path / "manifest" / "clips.parquet")
        self.boxes = pd.read_parquet(self.path / "manifest" / "boxes.parquet")
        self.shards = _shard_ranges(self.clips)
        self._maps: dict[tuple[str, int], np.memmap] = {}  # chunk files mapped once, like one big np.memmap

    # ---- shape and layout -------------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def row_shape(self, view: str) -> tuple[int, ...]:
        return get_view(view).shape(self.dims)

    def view_nbytes(self, view: str) -> int:
        """Bytes of ``view`` over all rows: what loading it into memory costs."""
        n_rows = len(self.clips) if get_view(view).rows == "clips" else len(self.boxes)
        return n_rows * int(np.prod(self.row_shape(view))) * np.dtype(self.dtype).itemsize

    def _array_path(self, view: str, shard: int) -> Path:
        return self.path / "views" / view / f"{shard:05d}"

    def _done_path(self, shard: int) -> Path:
        return self.path / "done" / f"{shard:05d}.json"

    # ---- writing ----------------------------------------------------------------------------------------
    def write_shard(self, shard: int, arrays: Mapping[str, np.ndarray], failed_clips: Iterable[int] = ()) -> None:
        """Write every view of one shard in one go, then its completion record. One writer per shard."""
        rng = self.shards[shard]
        if set(arrays) != set(self.views):
            raise StoreError(f"shard {shard}: got views {sorted(arrays)}, store holds {sorted(self.views)}")
        for view, data in arrays.items():
            lo, hi = rng.rows(get_view(view).rows)
            expected = (hi - lo, *self.row_shape(view))
            if tuple(data.shape) != expected:
                raise StoreError(f"shard {shard} view {view}: shape {tuple(data.shape)}, expected {expected}")
            path = self._array_path(view, shard)
            self._maps.pop((view, shard), None)
            if path.exists():
                shutil.rmtree(path)
            array = zarr.create_array(
                store=str(path),
                shape=expected,
                chunks=expected if expected[0] else (1, *expected[1:]),
                dtype=self.dtype,
                compressors=None,
                fill_value=0,
                zarr_format=3,
            )
            if expected[0]:
                array[...] = np.ascontiguousarray(data, dtype=self.dtype)
        record = {
            "shard": shard,
            "clips": [rng.clip_start, rng.clip_stop],
            "boxes": [rng.box_start, rng.box_stop],
            "views": sorted(arrays),
            "failed_clips": sorted(int(c) for c in failed_clips),
        }
        tmp = self._done_path(shard).with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self._done_path(shard))

    # ---- completion -------------------------------------------------------------------------------------
    def completed_shards(self) -> set[int]:
        """Shards whose completion record exists and matches the layout."""
        done = set()
        for path in (self.path / "done").glob("*.json"):
            record = json.loads(path.read_text())
            rng = self.shards[record["shard"]] if record["shard"] < self.num_shards else None
            if rng and record["clips"] == [rng.clip_start, rng.clip_stop] and set(record["views"]) == set(self.views):
                done.add(record["shard"])
        return done

    def missing_shards(self) -> list[int]:
        done = self.completed_shards()
        return [s for s in range(self.num_shards) if s not in done]

    def is_complete(self) -> bool:
        return not self.missing_shards()

    def failed_clips(self) -> np.ndarray:
        """Clip indices whose video failed to decode (their features are zeros)."""
        failed: list[int] = []
        for path in (self.path / "done").glob("*.json"):
            failed.extend(json.loads(path.read_text())["failed_clips"])
        return np.array(sorted(failed), dtype=np.int64)

    def verify(self) -> list[str]:
        """Problems found: shards not done, and done shards whose arrays are missing or the wrong shape."""
        problems = [f"shard {s}: not written (no completion record)" for s in self.missing_shards()]
        for s in sorted(self.completed_shards()):
            for view in self.views:
                try:
                    self.read_shard(view, s)
                except Exception as err:  # noqa: BLE001 - verify reports every failure, whatever its kind
                    problems.append(f"shard {s} view {view}: {err}")
        return problems

    # ---- reading ----------------------------------------------------------------------------------------
    def read_shard(self, view: str, shard: int, mmap: bool = False) -> np.ndarray:
        """All rows of ``view`` in ``shard``: one chunk, one file read (or a memory map of it with ``mmap``).

        Our arrays are one uncompressed chunk whose only codec is ``bytes`` (little endian), so by the Zarr v3
        spec the chunk file ``c/0/.../0`` holds the raw C-order array: it is mapped directly, which reads at
        memmap speed where zarr-python 3.1's decode path runs about 7x slower. Any other array is read by zarr.
        """
        if view not in self.views:
            raise StoreError(f"store {self.path} has no view {view!r} (it holds {', '.join(self.views)})")
        rng = self.shards[shard]
        lo, hi = rng.rows(get_view(view).rows)
        expected = (hi - lo, *self.row_shape(view))
        path = self._array_path(view, shard)
        try:
            meta = json.loads((path / "zarr.json").read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"shard {shard} view {view}: unreadable array metadata at {path}: {err}") from err
        if tuple(meta["shape"]) != expected:
            raise StoreError(f"shard {shard} view {view}: stored shape {tuple(meta['shape'])}, expected {expected}")
        if not expected[0]:
            return np.zeros(expected, dtype=self.dtype)
        if _is_raw_single_chunk(meta):
            chunk = path.joinpath("c", *["0"] * len(expected))
            nbytes = int(np.prod(expected)) * np.dtype(meta["data_type"]).itemsize
            size = chunk.stat().st_size if chunk.exists() else -1
            if size != nbytes:
                raise StoreError(f"shard {shard} view {view}: chunk {chunk} has {size} bytes, expected {nbytes}")
            data = self._maps.get((view, shard))
            if data is None:
                data = np.memmap(chunk, dtype=meta["data_type"], mode="r", shape=expected)
                self._maps[(view, shard)] = data
            return data if mmap else np.array(data)
        return np.asarray(zarr.open_array(str(path), mode="r")[...])

    def read_view(self, view: str) -> np.ndarray:
        """The whole view in row order (for views that fit in memory)."""
        missing = self.missing_shards()
        if missing:
            raise StoreError(f"store {self.path} is incomplete: {len(missing)} shard(s) missing, e.g. {missing[:5]}")
        return np.concatenate([self.read_shard(view, s) for s in range(self.num_shards)])

    # ---- description ------------------------------------------------------------------------------------
    def chunk_bytes(self, view: str) -> int:
        """Bytes of ``view``'s chunk files on disk (array metadata excluded): what the view costs in storage."""
        root = self.path / "views" / view
        chunk_dirs = [d / "c" for d in root.iterdir() if (d / "c").is_dir()] if root.is_dir() else []
        return sum(f.stat().st_size for c in chunk_dirs for f in c.rglob("*") if f.is_file())

    def failed_videos(self) -> pd.DataFrame:
        """The ``failures.parquet`` extraction writes (video_id, error), or an empty table when there is none."""
        path = self.path / "failures.parquet"
        return pd.read_parquet(path) if path.exists() else pd.DataFrame({"video_id": [], "error": []})

    def info(self, first: int = 5) -> dict[str, Any]:
        """A JSON-ready summary of the store (what ``pipeline info`` prints), so a store can be judged unopened.

        Views with their row shapes, dtype, bytes in memory and on disk; row counts (boxes by source); shards
        done; failed videos and clips (the first ``first`` of each listed); the fingerprint as stored.
        """
        views = []
        for view in self.views:
            spec = get_view(view)
            views.append(
                {
                    "name": view,
                    "rows": spec.rows,
                    "shape": list(self.row_shape(view)),
                    "dtype": self.dtype,
                    "memory_bytes": self.view_nbytes(view),
                    "disk_bytes": self.chunk_bytes(view),
                }
            )
        sources = self.boxes["source"].value_counts()
        missing = self.missing_shards()
        failures = self.failed_videos()
        failed_clips = self.failed_clips()
        return {
            "path": str(self.path),
            "spec_version": self.spec_version,
            "dtype": self.dtype,
            "clips_per_shard": self.clips_per_shard,
            "rows": {
                "clips": len(self.clips),
                "videos": int(self.clips["video_id"].nunique()),
                "boxes": len(self.boxes),
                "boxes_by_source": {s: int(sources.get(s, 0)) for s in mf.BOX_SOURCES},
            },
            "views": views,
            "disk_bytes": sum(v["disk_bytes"] for v in views),
            "shards": {"done": self.num_shards - len(missing), "total": self.num_shards, "missing": missing[:first]},
            "failed": {
                "videos": len(failures),
                "clips": len(failed_clips),
                "first": [
                    {"video_id": str(r.video_id), "error": str(r.error)} for r in failures.head(first).itertuples()
                ],
            },
            "fingerprint": self.fingerprint,
        }


def format_info(info: Mapping[str, Any]) -> str:
    """:meth:`Store.info` as aligned text for a person reading a terminal (``--json`` is for machines)."""
    rows, shards, failed = info["rows"], info["shards"], info["failed"]
    by_source = ", ".join(f"{n} {s}" for s, n in rows["boxes_by_source"].items())
    lines = [
        f"store        {info['path']}",
        f"spec         {info['spec_version']}, {info['dtype']}, {info['clips_per_shard']} clips per shard",
        f"rows         {rows['clips']} clips from {rows['videos']} videos; {rows['boxes']} boxes ({by_source})",
        f"shards       {shards['done']}/{shards['total']} done"
        + (f"; missing e.g. {', '.join(map(str, shards['missing']))}" if shards["missing"] else ""),
        "views",
    ]
    name_w = max([len(v["name"]) for v in info["views"]] + [5])
    shape_w = max([len(_shape(v["shape"])) for v in info["views"]] + [5])
    for v in info["views"]:
        lines.append(
            f"  {v['name']:<{name_w}}  {v['rows']:<5}  {_shape(v['shape']):<{shape_w}}  {v['dtype']}  "
            f"{_human_bytes(v['disk_bytes']):>10} on disk ({v['disk_bytes']:,} B)"
        )
    lines.append(
        f"  {'total':<{name_w}}  {'':<5}  {'':<{shape_w}}  {'':<{len(info['dtype'])}}  "
        f"{_human_bytes(info['disk_bytes']):>10} on disk ({info['disk_bytes']:,} B)"
    )
    if failed["videos"] or failed["clips"]:
        lines.append(f"failed       {failed['videos']} videos, {failed['clips']} clips (their features are zeros)")
        lines.extend(f"  {f['video_id']}: {f['error']}" for f in failed["first"])
        if failed["videos"] > len(failed["first"]):
            lines.append(f"  ... and {failed['videos'] - len(failed['first'])} more")
    else:
        lines.append("failed       none")
    lines.append("fingerprint")
    lines.extend(_nested(info["fingerprint"], indent=2))
    return "\n".join(lines)


def _shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop returns at GiB


def _nested(value: Mapping[str, Any], indent: int) -> list[str]:
    """Indented ``key: value`` lines, one level per nested mapping; lists of scalars stay on one line."""
    lines = []
    for key, item in value.items():
        if isinstance(item, Mapping) and item:
            lines.append(f"{' ' * indent}{key}:")
            lines.extend(_nested(item, indent + 2))
        elif isinstance(item, list) and any(isinstance(x, Mapping | list) for x in item):
            lines.append(f"{' ' * indent}{key}: {json.dumps(item, default=str)}")
        elif isinstance(item, list):
            lines.append(f"{' ' * indent}{key}: [{', '.join(map(str, item))}]")
        else:
            lines.append(f"{' ' * indent}{key}: {item}")
    return lines


def _is_raw_single_chunk(meta: Mapping[str, Any]) -> bool:
    """True when an array's metadata says its one chunk file is the raw little-endian array."""
    codecs = meta.get("codecs", [])
    return (
        meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape") == meta["shape"]
        and meta.get("chunk_key_encoding", {}).get("name") == "default"
        and meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/") == "/"
        and len(codecs) == 1
        and codecs[0]["name"] == "bytes"
        and codecs[0].get("configuration", {}).get("endian", "little") == "little"
        and not meta.get("storage_transformers")
    )


def _shard_ranges(clips: pd.DataFrame) -> list[ShardRange]:
    shard = clips["shard"].to_numpy()
    starts = clips["box_start"].to_numpy(np.int64)
    stops = starts + clips["box_count"].to_numpy(np.int64)
    ranges = []
    n = int(shard.max()) + 1 if len(shard) else 0
    bounds = np.searchsorted(shard, np.arange(n + 1))
    for s in range(n):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        box_lo = int(starts[lo]) if hi > lo else 0
        box_hi = int(stops[hi - 1]) if hi > lo else 0
        ranges.append(ShardRange(s, lo, hi, box_lo, box_hi))
    return ranges


def assign_shards(clips: pd.DataFrame, clips_per_shard: int) -> pd.DataFrame:
    """Set the ``shard`` column: consecutive runs of ``clips_per_shard`` clips."""
    if clips_per_shard < 1:
        raise ValueError("clips_per_shard must be >= 1")
    out = clips.copy()
    out["shard"] = (np.arange(len(out)) // clips_per_shard).astype(np.int32)
    return out


def create_store(
    path: Path,
    *,
    fingerprint: Mapping[str, Any],
    dims: Mapping[str, int],
    views: Iterable[str],
    clips: pd.DataFrame,
    boxes: pd.DataFrame,
    clips_per_shard: int,
    dtype: str = "float16",
) -> Store:
    """Create a store, or reopen an existing one with the same fingerprint (to resume).

    The manifest's digest joins the fingerprint, so resuming over other annotations or boxes is refused.
    """
    path = Path(path)
    views = sorted(set(views))
    for view in views:
        get_view(view).shape(dims)  # fails early on an unknown view or missing dimension
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; choose one of {DTYPES}")
    clips = assign_shards(clips, clips_per_shard)
    mf.validate(clips, boxes)
    full_fingerprint = {
        **fingerprint,
        "manifest": mf.digest(clips, boxes),
        "views": views,
        "dtype": dtype,
        "clips_per_shard": clips_per_shard,
        "dims": dict(dims),
    }
    if (path / "zarr.json").exists():
        store = open_store(path, expected_fingerprint=full_fingerprint)
        log.info("resuming store %s: %d/%d shards done", path, len(store.completed_shards()), store.num_shards)
        return store
    tmp = path.with_name(path.name + ".creating")
    if tmp.exists():
        shutil.rmtree(tmp)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)  # mode "w" empties the folder: do it first
    (tmp / "manifest").mkdir()
    (tmp / "done").mkdir()
    pq.write_table(mf.to_table(clips, mf.CLIP_SCHEMA), tmp / "manifest" / "clips.parquet")
    pq.write_table(mf.to_table(boxes, mf.BOX_SCHEMA), tmp / "manifest" / "boxes.parquet")
    views_group = group.create_group("views")
    for view in views:
        views_group.create_group(view)
    group.attrs.update(
        {
            "spec_version": SPEC_VERSION,
            "fingerprint": full_fingerprint,
            "dims": dict(dims),
            "dtype": dtype,
            "views": views,
            "clips_per_shard": clips_per_shard,
        }
    )
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return Store(path)


def open_store(path: Path, expected_fingerprint: Mapping[str, Any] | None = None) -> Store:
    """Open a store, refusing another spec version or (when given) another fingerprint, naming the fields."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"no feature store at {path} (run `pipeline extract` first)")
    attrs: dict[str, Any] = dict(zarr.open_group(str(path), mode="r").attrs)
    version = attrs.get("spec_version")
    if version != SPEC_VERSION:
        raise StoreMismatchError(
            f"store {path} was written with cache spec version {version!r}; this code reads {SPEC_VERSION!r}. "
            "Re-run `pipeline extract`."
        )
    if expected_fingerprint is not None:
        diffs = fingerprint_differences(attrs["fingerprint"], expected_fingerprint)
        if diffs:
            raise StoreMismatchError(
                f"store {path} was written with another configuration:\n  "
                + "\n  ".join(diffs)
                + "\nDelete it or write to another path."
            )
    return Store(path)
