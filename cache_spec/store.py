"""The store: a Zarr v3 group of per-shard view arrays, a Parquet manifest and per-shard completion records.

Layout of ``<name>.zarr/``::

    zarr.json                       group attributes: spec version, fingerprint, dims, views, sharding
    manifest/clips.parquet          the clip row space (one keyframe each)
    manifest/boxes.parquet          the box row space, contiguous per clip
    views/<view>/<shard>/           one Zarr array per (view, shard), stored as ONE chunk (always written)
    done/<shard>.json               completion record with checksums, written last and atomically
    failures.parquet                clips whose video could not be decoded (optional)

and beside it ``<name>.zarr.lock`` while an extraction writes it (:func:`lock_store`).

Why one array per shard with one chunk: zarr 3.1 costs about 1 ms per chunk read whatever its size, and two
writers touching one shard lose rows (design §3). A shard is a contiguous run of clips (and so of boxes),
written in one go by exactly one writer, so a reader fetches few, large, sequential files and parallel
writers never share a file. The done record makes extraction resumable: a shard without one is rewritten.

Why records carry checksums: a store is only as good as the trust a reader can put in it. A record holds the
size and CRC32C of every file of its shard and of the manifest files, a digest of the group attributes
(fingerprint included) and a checksum of itself. Opening a store stays cheap: records are parsed and checked
against the attributes and the manifest (whose bytes are read anyway), never against the chunks, and a damaged
record is an error naming its file, never a silently skipped shard. :func:`verify_store` reads everything;
:func:`repair_store` drops what is bad so that the next extraction redoes exactly that; :func:`create_store`
rebuilds a lost or damaged ``zarr.json`` or manifest from the configuration, keeping the shards that check out.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import google_crc32c
import numpy as np
import pandas as pd
import zarr

from cache_spec import manifest as mf
from cache_spec.errors import InputError
from cache_spec.views import get_view

log = logging.getLogger(__name__)

SPEC_VERSION = "1.0"
DTYPES = ("float16", "float32")
ATTRIBUTES = ("spec_version", "fingerprint", "dims", "dtype", "views", "clips_per_shard")
RECORD_FIELDS = ("shard", "clips", "boxes", "views", "failed_clips")
_SIGNED_FIELDS = ("record_crc32c", "files", "manifest", "attributes")  # only records with checksums have these
_BLOCK = 16 << 20  # bytes per read or write while checksumming


class StoreError(InputError, RuntimeError):
    """A store that cannot be used as asked (missing, incomplete, corrupt)."""


class StoreMismatchError(StoreError):
    """A store written by another spec version or configuration than the one asked for."""


class StoreLockedError(StoreError):
    """Another process holds the store's lock: one writer per store."""


class StoreWriteError(StoreError):
    """Writing a shard failed (disk full, I/O error); the message names the path and the free space."""


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


def _attributes_digest(attrs: Mapping[str, Any]) -> str:
    """What a record keeps of the group attributes: equal digests, equal attributes (fingerprint included)."""
    return hashlib.sha256(_canonical(attrs).encode()).hexdigest()[:16]


def _cli_args(fingerprint: Any) -> str:
    """`` --split S`` (and ``--dataset``/``--scale``/``--flip``) naming a store in the commands a message suggests."""
    fp = fingerprint if isinstance(fingerprint, Mapping) else {}
    args = f" --split {fp.get('split', '<split>')}"
    if fp.get("dataset", "ava") != "ava":
        args += f" --dataset {fp['dataset']}"
    if fp.get("scale", 1.0) != 1.0:
        args += f" --scale {fp['scale']}"
    if fp.get("flip"):
        args += " --flip"
    return args


def _repair_hint(args: str) -> str:
    return f"run `pipeline verify{args} --repair`, then `pipeline extract{args}`"


# ---- checksums and completion records -----------------------------------------------------------------------------
def _crc_hex(crc: int) -> str:
    return f"{crc:08x}"


def _bytes_sum(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "crc32c": _crc_hex(google_crc32c.value(data))}


def file_sum(path: Path) -> dict[str, Any]:
    """Size and CRC32C of a file (read in blocks): what a completion record keeps of each file it covers."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            crc = google_crc32c.extend(crc, block)
            size += len(block)
    return {"bytes": size, "crc32c": _crc_hex(crc)}


def _write_chunk(path: Path, data: np.ndarray) -> dict[str, Any]:
    """Write ``data`` as the one chunk file of its array and return the file's size and CRC32C.

    The chunk of a one-chunk array whose only codec is ``bytes`` (little endian) is, by the Zarr v3 spec, the
    raw C-order array, so it is written directly: always, zeros included (zarr skips a chunk equal to its fill
    value, and a shard whose clips all failed is all zeros), and checksummed from the bytes written.
    """
    flat = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    crc = 0
    with open(path, "wb") as f:
        for start in range(0, len(flat), _BLOCK):
            block = flat[start : start + _BLOCK].tobytes()
            f.write(block)
            crc = google_crc32c.extend(crc, block)
    return {"bytes": len(flat), "crc32c": _crc_hex(crc)}


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a small file so that readers see the old one or the new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _signed_record(body: Mapping[str, Any]) -> bytes:
    """A completion record's bytes: canonical JSON with a checksum of itself, so any damage shows when it is read."""
    own = _crc_hex(google_crc32c.value(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()))
    return json.dumps({**body, "record_crc32c": own}, sort_keys=True, separators=(",", ":")).encode()


def _load_record(file: Path) -> tuple[dict[str, Any] | None, str]:
    """A completion record (without its own checksum) and "", or None and what is wrong with the file."""
    try:
        record = json.loads(file.read_bytes())
    except OSError as err:
        return None, f"is unreadable ({err.strerror or err})"
    except ValueError as err:
        return None, f"is truncated or not JSON ({err})"
    if not isinstance(record, dict):
        return None, "is not a JSON object"
    if any(key in record for key in _SIGNED_FIELDS):
        stated = record.pop("record_crc32c", None)
        own = _crc_hex(google_crc32c.value(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()))
        if stated != own:
            return None, "is damaged (its own checksum does not match)"
    missing = [key for key in RECORD_FIELDS if key not in record]
    if missing:
        return None, f"is incomplete (it lacks {', '.join(missing)})"
    return record, ""


def _is_legacy(record: Mapping[str, Any]) -> bool:
    """A record written before records held checksums: readers accept it, ``verify`` cannot vouch for it."""
    return "files" not in record


def _shard_of(file: Path) -> int | None:
    return int(file.stem) if file.stem.isdigit() else None


def _record_fit(
    shard: int | None,
    record: Mapping[str, Any],
    *,
    shards: list[ShardRange] | None,
    views: list[str] | None,
    attributes: str | None,
    manifest: Mapping[str, Any] | None,
) -> str:
    """What keeps a parsed record from fitting the store ("" if it fits); a None argument is not checked."""
    if record["shard"] != shard:
        return f"holds shard {record['shard']!r}, its file name says {shard}"
    if shards is not None:
        if shard is None or not 0 <= shard < len(shards):
            return f"is for shard {shard}, the manifest has {len(shards)} shards"
        rng = shards[shard]
        clips, boxes = [rng.clip_start, rng.clip_stop], [rng.box_start, rng.box_stop]
        if record["clips"] != clips or record["boxes"] != boxes:
            return f"covers clips {record['clips']} and boxes {record['boxes']}, the manifest gives {clips} and {boxes}"
    if views is not None and sorted(record["views"]) != sorted(views):
        return f"holds views {sorted(record['views'])}, the store holds {sorted(views)}"
    if _is_legacy(record):
        return ""
    if attributes is not None and record.get("attributes") != attributes:
        return "was written with other attributes than zarr.json holds (the fingerprint or attributes were edited)"
    if manifest is not None and any(record.get("manifest", {}).get(n) != s for n, s in manifest.items()):
        return "was written with another manifest than manifest/ holds (the manifest was damaged or replaced)"
    return ""


def _file_problems(root: Path, record: Mapping[str, Any], read: bool) -> list[str]:
    """The files of a record that are missing, resized or (``read``: a full read) changed since they were written."""
    problems = []
    for rel, want in sorted(record["files"].items()):
        file = root / rel
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            problems.append(f"{rel} is missing")
            continue
        if size != want["bytes"]:
            problems.append(f"{rel} has {size} bytes, its record says {want['bytes']} (truncated or overwritten)")
        elif read and (got := file_sum(file)["crc32c"]) != want["crc32c"]:
            problems.append(
                f"{rel} has checksum crc32c {got}, its record says {want['crc32c']} (its bytes changed after writing)"
            )
    return problems


def _write_error(store: Path, shard: int, where: Path, err: OSError) -> str:
    """One line for a failed write: what, where, why, the free space, and that a rerun resumes."""
    try:
        free = f"{_human_bytes(shutil.disk_usage(store).free)} free on that disk"
    except OSError:
        free = "free space unknown"
    code = errno.errorcode.get(err.errno, str(err.errno)) if err.errno else ""
    reason = f"{err.strerror} ({code})" if err.strerror else str(err) or type(err).__name__
    return (
        f"cannot write shard {shard} of store {store}: {reason} while writing {where} ({free}); nothing of that "
        "shard is kept. Free some space (or fix the disk) and rerun the same command: finished shards are kept"
    )


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

    def __init__(self, path: Path, attrs: Mapping[str, Any] | None = None):
        self.path = Path(path)
        attrs = dict(_read_attributes(self.path) if attrs is None else attrs)
        self.attributes_digest = _attributes_digest(attrs)
        self.spec_version: str = attrs["spec_version"]
        self.fingerprint: dict[str, Any] = attrs["fingerprint"]
        self.dims: dict[str, int] = attrs["dims"]
        self.dtype: str = attrs["dtype"]
        self.views: list[str] = list(attrs["views"])
        self.clips_per_shard: int = attrs["clips_per_shard"]
        tables = {name: _read_manifest_file(self.path, name, self.cli_args) for name in mf.FILES}
        self.clips, self.boxes = tables["clips.parquet"][0], tables["boxes.parquet"][0]
        self.manifest_sums: dict[str, dict[str, Any]] = {name: table[1] for name, table in tables.items()}
        try:
            mf.validate(self.clips, self.boxes)
        except mf.ManifestError as err:
            raise StoreError(
                f"store {self.path}: its manifest is damaged ({err}); run `pipeline extract{self.cli_args}` to "
                "rewrite it from the data set"
            ) from err
        self.shards = _shard_ranges(self.clips)
        self._maps: dict[tuple[str, int], np.memmap] = {}  # chunk files mapped once, like one big np.memmap

    @property
    def cli_args(self) -> str:
        """`` --split S ...``: how the commands a message suggests name this store."""
        return _cli_args(self.fingerprint)

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

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.path).as_posix()

    # ---- writing ----------------------------------------------------------------------------------------
    def write_shard(self, shard: int, arrays: Mapping[str, np.ndarray], failed_clips: Iterable[int] = ()) -> None:
        """Write every view of one shard in one go, then its completion record. One writer per shard.

        Every chunk file is written, even an all-zero one, so a complete shard always has its files; the record,
        written last, holds their checksums. An I/O error (disk full) removes what this call wrote and raises a
        :class:`StoreWriteError` naming the path and the free space: no record is ever written for a partial shard.
        """
        rng = self.shards[shard]
        if set(arrays) != set(self.views):
            raise StoreError(f"shard {shard}: got views {sorted(arrays)}, store holds {sorted(self.views)}")
        for view, data in arrays.items():
            lo, hi = rng.rows(get_view(view).rows)
            expected = (hi - lo, *self.row_shape(view))
            if tuple(data.shape) != expected:
                raise StoreError(f"shard {shard} view {view}: shape {tuple(data.shape)}, expected {expected}")
        done = where = self._done_path(shard)
        try:
            done.unlink(missing_ok=True)  # a shard being rewritten is not done until its new record is written
            files: dict[str, dict[str, Any]] = {}
            for view in sorted(arrays):
                lo, hi = rng.rows(get_view(view).rows)
                expected = (hi - lo, *self.row_shape(view))
                path = where = self._array_path(view, shard)
                self._maps.pop((view, shard), None)
                if path.exists():
                    shutil.rmtree(path)
                zarr.create_array(
                    store=str(path),
                    shape=expected,
                    chunks=expected if expected[0] else (1, *expected[1:]),
                    dtype=self.dtype,
                    compressors=None,
                    fill_value=0,
                    zarr_format=3,
                )
                meta = path / "zarr.json"
                files[self._rel(meta)] = file_sum(meta)
                if expected[0]:
                    if not _is_raw_single_chunk(json.loads(meta.read_text())):
                        raise StoreError(f"zarr wrote {meta} with another layout than one raw chunk")
                    chunk = where = path.joinpath("c", *["0"] * len(expected))
                    files[self._rel(chunk)] = _write_chunk(chunk, np.asarray(arrays[view], dtype=self.dtype))
            record = {
                "shard": shard,
                "clips": [rng.clip_start, rng.clip_stop],
                "boxes": [rng.box_start, rng.box_stop],
                "views": sorted(arrays),
                "failed_clips": sorted(int(c) for c in failed_clips),
                "checksum": "crc32c",
                "attributes": self.attributes_digest,
                "manifest": self.manifest_sums,
                "files": files,
            }
            where = done
            _write_atomic(done, _signed_record(record))
        except OSError as err:
            self._discard(shard)
            raise StoreWriteError(_write_error(self.path, shard, where, err)) from err

    def _discard(self, shard: int) -> None:
        """Best effort after a failed write: remove what the shard has on disk (its arrays, a half-written record)."""
        for view in self.views:
            self._maps.pop((view, shard), None)
            shutil.rmtree(self._array_path(view, shard), ignore_errors=True)
        done = self._done_path(shard)
        for file in (done, done.with_name(done.name + ".tmp")):
            with contextlib.suppress(OSError):
                file.unlink(missing_ok=True)

    # ---- completion -------------------------------------------------------------------------------------
    def _record_files(self) -> list[Path]:
        done = self.path / "done"
        return sorted(done.glob("*.json")) if done.is_dir() else []

    def _check_record(self, file: Path) -> tuple[int | None, dict[str, Any] | None, str]:
        """(shard, record, "") for a record that fits this store's layout, attributes and manifest, else the problem."""
        shard = _shard_of(file)
        record, problem = _load_record(file)
        if record is None:
            return shard, None, problem
        problem = _record_fit(
            shard,
            record,
            shards=self.shards,
            views=self.views,
            attributes=self.attributes_digest,
            manifest=self.manifest_sums,
        )
        return shard, (None if problem else record), problem

    def records(self) -> dict[int, dict[str, Any]]:
        """Every completion record by shard. A damaged or unfitting record is a :class:`StoreError` naming the file:
        a reader must never take a damaged store for a complete one (extraction drops such records instead)."""
        out = {}
        for file in self._record_files():
            shard, record, problem = self._check_record(file)
            if record is None or shard is None:
                raise StoreError(
                    f"store {self.path}: completion record {file} {problem}; {_repair_hint(self.cli_args)}"
                )
            out[shard] = record
        return out

    def completed_shards(self) -> set[int]:
        """Shards whose completion record exists and fits the store (see :meth:`records`)."""
        return set(self.records())

    def missing_shards(self) -> list[int]:
        done = self.completed_shards()
        return [s for s in range(self.num_shards) if s not in done]

    def is_complete(self) -> bool:
        return not self.missing_shards()

    def failed_clips(self) -> np.ndarray:
        """Clip indices whose video failed to decode (their features are zeros)."""
        failed = [c for record in self.records().values() for c in record["failed_clips"]]
        return np.array(sorted(failed), dtype=np.int64)

    def verify(self, values: bool = False) -> list[str]:
        """Every problem :func:`verify_store` finds (a full read of the store); empty when the store is sound."""
        return [problem.message for problem in verify_store(self.path, values).problems]

    def drop_unusable_records(self) -> list[int]:
        """Before resuming: drop records that are damaged or do not fit, or whose files are missing or resized, so
        their shards are extracted again. Cheap (no chunk is read): bit rot is for ``verify``. Returns the shards."""
        done = self.path / "done"
        for tmp in done.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        dropped = []
        for file in self._record_files():
            shard, record, problem = self._check_record(file)
            problem = f"it {problem}" if problem else ""
            if record is not None and shard is not None:
                if _is_legacy(record):
                    problem = "; ".join(self._legacy_problems(shard))
                else:
                    problem = "; ".join(_file_problems(self.path, record, read=False))
            if problem:
                log.warning(
                    "store %s: dropping completion record %s: %s; its shard is extracted again",
                    self.path,
                    file,
                    problem,
                )
                file.unlink()
                if shard is not None:
                    dropped.append(shard)
        return dropped

    def _legacy_problems(self, shard: int) -> list[str]:
        problems = []
        for view in self.views:
            try:
                self.read_shard(view, shard, mmap=True)
            except StoreError as err:
                problems.append(str(err))
        return problems

    def _resign_manifest(self) -> None:
        """After the manifest was rewritten from the configuration (whose digest the fingerprint vouches for):
        records name the new manifest files; their chunk checksums are untouched."""
        for file in self._record_files():
            record, _ = _load_record(file)
            if record is not None and not _is_legacy(record) and record.get("manifest") != self.manifest_sums:
                _write_atomic(file, _signed_record({**record, "manifest": self.manifest_sums}))

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


# ---- verification and repair --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store, and what a repair removes for it."""

    message: str
    shard: int | None = None  # the shard it makes bad: a repair drops its record and arrays
    files: tuple[str, ...] = ()  # store files it makes bad: a repair deletes them, extraction rebuilds them


@dataclass
class VerifyReport:
    """What :func:`verify_store` found. ``ok`` only when there is nothing to report at all."""

    path: Path
    values: bool = False
    problems: list[Problem] = field(default_factory=list)
    num_shards: int | None = None  # None when the manifest is unreadable
    intact: set[int] = field(default_factory=set)
    failed_clips: int = 0  # accepted failures (allow_missing) in intact shards: their rows are zeros
    failed_videos: list[str] = field(default_factory=list)
    args: str = " --split <split>"  # how commands name the store, from its fingerprint
    unusable: str = ""  # set when the store cannot be checked at all (another spec version)

    def add(self, message: str, shard: int | None = None, files: tuple[str, ...] = ()) -> None:
        self.problems.append(Problem(message, shard, files))

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failed_clips

    @property
    def bad_shards(self) -> list[int]:
        return sorted({p.shard for p in self.problems if p.shard is not None})

    @property
    def damaged_files(self) -> list[str]:
        return sorted({f for p in self.problems for f in p.files})

    def lines(self) -> list[str]:
        """Each problem, then the accepted failures (which are reported, and fail ``verify``, but need no repair)."""
        out = [p.message for p in self.problems]
        if self.failed_clips:
            videos = self.failed_videos
            out.append(
                f"{self.failed_clips} clips of {len(videos)} videos failed and hold zeros (accepted with "
                "--allow-missing): " + ", ".join(videos[:5]) + (" ..." if len(videos) > 5 else "")
            )
        return out

    def verdict(self, args: str | None = None) -> str:
        """One line that agrees with :meth:`lines`: OK only when they are empty, else what is wrong and the fix."""
        args = self.args if args is None else args
        n = "?" if self.num_shards is None else self.num_shards
        if self.ok:
            checked = "every checksum matches" + (", every value is finite" if self.values else "")
            return f"verdict: OK: {self.path}: {n}/{n} shards complete, {checked}"
        if self.unusable:
            return f"verdict: NOT OK: {self.path}: {self.unusable}"
        bad = self.bad_shards
        if self.num_shards is None:
            parts = [f"{len(self.intact)} shard(s) intact, {len(bad)} damaged, of a total unknown without the manifest"]
        elif bad:
            parts = [f"{len(bad)} of {n} shards missing or damaged"]
        else:
            parts = [f"all {n} shards intact"]
        files = self.damaged_files
        parts += [f"{name} missing or damaged" for name in ("zarr.json", "failures.parquet") if name in files]
        if any(f.startswith("manifest/") for f in files):
            parts.append("manifest missing or damaged")
        if self.failed_clips:
            parts.append(f"{self.failed_clips} clips hold zeros (their videos failed; accepted with --allow-missing)")
        count = len(self.problems) + bool(self.failed_clips)
        text = f"verdict: NOT OK: {self.path}: {count} problem{'' if count == 1 else 's'}: " + "; ".join(parts)
        if self.problems:
            text += f"; to fix: {_repair_hint(args)}"
        return text


def verify_store(path: Path, values: bool = False) -> VerifyReport:
    """Check everything a store's trust rests on; a full read of its files (unlike :func:`open_store`).

    The attributes and the manifest (readable, row-space contract, digest against the fingerprint, checksums
    against the records), every completion record (its own checksum, layout, attributes, manifest), every file
    it lists (present, size, checksum), the array shapes against the manifest, shards without a record, and with
    ``values`` every value (NaN/Inf). Works on a store :func:`open_store` refuses, to say why.
    """
    path = Path(path)
    report = VerifyReport(path, values)
    attrs, problem = _try_attributes(path)
    if attrs is None:
        report.add(f"zarr.json {problem}", files=("zarr.json",))
    elif attrs.get("spec_version") != SPEC_VERSION:
        report.add(_spec_message(path, attrs))
        report.unusable = f"a store of cache spec version {attrs.get('spec_version')!r}, which this code cannot read"
        return report
    else:
        report.args = _cli_args(attrs["fingerprint"])
    records: dict[int, dict[str, Any]] = {}
    done = path / "done"
    for file in sorted(done.glob("*.json")) if done.is_dir() else []:
        shard, rel = _shard_of(file), f"done/{file.name}"
        record, problem = _load_record(file)
        if record is not None:
            problem = _record_fit(shard, record, shards=None, views=None, attributes=None, manifest=None)
        if record is None or problem or shard is None:
            where = f"shard {shard}: completion record" if shard is not None else "completion record"
            report.add(
                f"{where} {rel} {problem or 'is not named for a shard'}", shard, () if shard is not None else (rel,)
            )
        else:
            records[shard] = record
    signed = [r for r in records.values() if not _is_legacy(r)]

    digest = None
    if attrs is not None:
        digest = _attributes_digest(attrs)
        if signed and all(r["attributes"] != digest for r in signed):
            report.add(
                f"zarr.json holds other attributes than those all {len(signed)} completion record(s) were written "
                "with (the fingerprint or attributes were edited or damaged)",
                files=("zarr.json",),
            )
            digest = None
    frames, sums = _verify_manifest(path, attrs if digest is not None else None, signed, report)
    shards = _shard_ranges(frames[0]) if frames is not None else None
    report.num_shards = None if shards is None else len(shards)

    views = list(attrs["views"]) if digest is not None and attrs is not None else None
    for shard, record in sorted(records.items()):
        rel = f"done/{shard:05d}.json"
        if _is_legacy(record):
            report.add(
                f"shard {shard}: completion record {rel} holds no checksums (written before records had them), so "
                "its data cannot be verified",
                shard,
            )
            continue
        problem = _record_fit(shard, record, shards=shards, views=views, attributes=digest, manifest=sums)
        problems = [f"completion record {rel} {problem}"] if problem else []
        if not problems and shards is not None and views is not None and attrs is not None:
            problems += _shape_problems(path, shard, record, shards[shard], views, attrs["dims"])
        if not problems:
            problems += _file_problems(path, record, read=True)
            if values and not any(" has checksum " not in p for p in problems):  # every file there, sized right
                problems += _value_problems(path, record)
        for text in problems:
            report.add(f"shard {shard}: {text}", shard)
        if not problems:
            report.intact.add(shard)
    if shards is not None:
        for shard in range(len(shards)):
            if shard not in records and not any(p.shard == shard for p in report.problems):
                report.add(f"shard {shard}: not written (no completion record)", shard)

    failed = sorted(c for s in report.intact for c in records[s]["failed_clips"])
    report.failed_clips = len(failed)
    if frames is not None and failed:
        video = frames[0]["video_id"].to_numpy()
        report.failed_videos = sorted({str(video[c]) for c in failed if 0 <= c < len(video)})
    failures = path / "failures.parquet"
    if failures.exists():
        try:
            pd.read_parquet(failures)
        except Exception as err:  # noqa: BLE001 - whatever pyarrow raises, the file is unusable
            report.add(f"failures.parquet is unreadable ({type(err).__name__}: {err})", files=("failures.parquet",))
    return report


def _verify_manifest(
    path: Path, attrs: Mapping[str, Any] | None, signed: list[dict[str, Any]], report: VerifyReport
) -> tuple[tuple[pd.DataFrame, pd.DataFrame] | None, dict[str, dict[str, Any]]]:
    """The manifest tables when they are readable and sound, and the checksums of the files the ``signed`` records
    agree with (a file none of them was written with is damaged: reported, and left out)."""
    tables, sums = {}, {}
    for name in mf.FILES:
        file = path / "manifest" / name
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            report.add(f"manifest/{name} is missing", files=(f"manifest/{name}",))
            continue
        except OSError as err:
            report.add(f"manifest/{name} is unreadable ({err.strerror or err})", files=(f"manifest/{name}",))
            continue
        got, wanted = _bytes_sum(data), {r["manifest"].get(name, {}).get("crc32c") for r in signed}
        if signed and got["crc32c"] not in wanted:
            report.add(
                f"manifest/{name} has checksum crc32c {got['crc32c']}, its completion records hold "
                f"{', '.join(sorted(str(w) for w in wanted))} (it changed after the shards were written)",
                files=(f"manifest/{name}",),
            )
        else:
            sums[name] = got
        try:
            tables[name] = mf.read_parquet_bytes(data)
        except Exception as err:  # noqa: BLE001 - whatever pyarrow raises, the file is unusable
            report.add(f"manifest/{name} is unreadable ({type(err).__name__}: {err})", files=(f"manifest/{name}",))
            continue
    if len(tables) < len(mf.FILES):
        return None, sums
    clips, boxes = tables["clips.parquet"], tables["boxes.parquet"]
    every = tuple(f"manifest/{name}" for name in mf.FILES)
    try:
        mf.validate(clips, boxes)
    except mf.ManifestError as err:
        report.add(f"manifest breaks the row-space contract ({err})", files=every)
        return None, sums
    if attrs is not None:
        stated = attrs["fingerprint"].get("manifest") if isinstance(attrs["fingerprint"], Mapping) else None
        if stated is not None and (actual := mf.digest(clips, boxes)) != stated:
            report.add(
                f"manifest has digest {actual}, the fingerprint says {stated} (damaged or replaced)", files=every
            )
            return None, {}
        per_shard = int(attrs["clips_per_shard"])
        if not np.array_equal(clips["shard"].to_numpy(), np.arange(len(clips)) // per_shard):
            report.add(f"manifest's shard column disagrees with {per_shard} clips per shard", files=every)
            return None, sums
    return (clips, boxes), sums


def _shape_problems(
    root: Path, shard: int, record: Mapping[str, Any], rng: ShardRange, views: list[str], dims: Mapping[str, int]
) -> list[str]:
    """The arrays a record lists against the manifest: every view's metadata (and chunk when it has rows), shaped
    as the shard's rows times the view's row shape."""
    problems, expected_files = [], set()
    for view in views:
        lo, hi = rng.rows(get_view(view).rows)
        shape = [hi - lo, *get_view(view).shape(dims)]
        base = f"views/{view}/{shard:05d}"
        expected_files.add(f"{base}/zarr.json")
        if shape[0]:
            expected_files.add(f"{base}/c/" + "/".join(["0"] * len(shape)))
        try:
            meta = json.loads((root / base / "zarr.json").read_bytes())
            stored = list(meta["shape"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            problems.append(f"{base}/zarr.json is unreadable ({type(err).__name__}: {err})")
            continue
        if stored != shape:
            problems.append(f"{base} has shape {stored}, the manifest and dims give {shape}")
    listed = set(record["files"])
    if listed != expected_files:
        problems.append(
            f"its record lists {sorted(listed - expected_files) or 'no extra files'} beyond and misses "
            f"{sorted(expected_files - listed) or 'no files'} of the files the manifest implies"
        )
    return problems


def _value_problems(root: Path, record: Mapping[str, Any]) -> list[str]:
    """NaN/Inf in a shard's chunks (read in row blocks, so a large shard is never held twice)."""
    problems = []
    for rel in sorted(record["files"]):
        if "/c/" not in rel:
            continue
        base = root / rel.split("/c/")[0]
        meta = json.loads((base / "zarr.json").read_bytes())
        data = np.memmap(root / rel, dtype=meta["data_type"], mode="r", shape=tuple(meta["shape"]))
        count, first = 0, -1
        step = max(1, (64 << 20) // max(1, data[0].nbytes))
        for start in range(0, len(data), step):
            bad = ~np.isfinite(data[start : start + step]).reshape(min(step, len(data) - start), -1)
            rows = np.flatnonzero(bad.any(axis=1))
            if len(rows) and first < 0:
                first = start + int(rows[0])
            count += int(bad.sum())
        if count:
            view = rel.split("/")[1]
            problems.append(f"{rel} holds {count} NaN/Inf value(s) (view {view}, first in row {first} of the shard)")
    return problems


def repair_store(report: VerifyReport) -> list[str]:
    """Drop what :func:`verify_store` found bad, so that the next extraction redoes exactly that; one line per action.

    Bad shards lose their record and arrays; a damaged ``zarr.json``, manifest file or ``failures.parquet`` is
    deleted, and extraction rebuilds it from the configuration (keeping the shards whose checksums still match).
    Holds the store's lock, so it never races an extraction.
    """
    path, actions = report.path, []
    with lock_store(path):
        for rel in report.damaged_files:
            if (path / rel).exists():
                (path / rel).unlink()
                actions.append(f"deleted {path / rel}")
        shards = report.bad_shards
        views = path / "views"
        for shard in shards:
            (path / "done" / f"{shard:05d}.json").unlink(missing_ok=True)
            for view in sorted(views.iterdir()) if views.is_dir() else []:
                if (view / f"{shard:05d}").is_dir():
                    shutil.rmtree(view / f"{shard:05d}")
        for tmp in (path / "done").glob("*.tmp") if (path / "done").is_dir() else []:
            tmp.unlink()
        if shards:
            actions.append(f"dropped the completion records and arrays of shard(s) {', '.join(map(str, shards))}")
    return actions


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
    """Create a store, or reopen an existing one with the same fingerprint (to resume), repairing what it can.

    The manifest's digest joins the fingerprint, so resuming over other annotations or boxes is refused. On
    reopening, records that are damaged or whose files are missing or resized are dropped (their shards are
    redone) and a damaged or missing manifest file is rewritten from ``clips``/``boxes``. A missing or damaged
    ``zarr.json`` (or one edited after its shards were written) is rebuilt from the arguments, keeping only the
    shards whose records fit and whose checksums all still match (a full read of those shards); when none of the
    shards was written with these arguments, that is refused with what to delete.
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
    attrs = {
        "spec_version": SPEC_VERSION,
        "fingerprint": full_fingerprint,
        "dims": dict(dims),
        "dtype": dtype,
        "views": views,
        "clips_per_shard": clips_per_shard,
    }
    stored, problem = _try_attributes(path)
    if stored is None and not _record_digests(path):
        return _create_fresh(path, attrs, clips, boxes)  # nothing finished to keep
    if stored is not None and _canonical(stored) == _canonical(attrs):
        return _resume(path, stored, attrs, clips, boxes)
    if stored is None:
        return _rebuild(path, attrs, clips, boxes, f"its zarr.json {problem}")
    digests = _record_digests(path)
    if _attributes_digest(attrs) in digests and _attributes_digest(stored) not in digests:
        return _rebuild(path, attrs, clips, boxes, "its zarr.json was edited or damaged after its shards were written")
    if stored.get("spec_version") == SPEC_VERSION and not fingerprint_differences(
        stored["fingerprint"], full_fingerprint
    ):
        return _rebuild(path, attrs, clips, boxes, "its zarr.json attributes are damaged")
    _refuse_mismatch(path, stored, full_fingerprint)


def _create_fresh(path: Path, attrs: Mapping[str, Any], clips: pd.DataFrame, boxes: pd.DataFrame) -> Store:
    """A new, empty store, built beside ``path`` and moved in place, so a reader never sees half a store."""
    tmp = path.with_name(path.name + ".creating")
    _create_skeleton(tmp, attrs, clips, boxes)
    for stale in (path, path.with_name(path.name + ".old")):  # .old: left by a rebuild that was killed
        if stale.exists():
            shutil.rmtree(stale)
    os.replace(tmp, path)
    return Store(path)


def _create_skeleton(path: Path, attrs: Mapping[str, Any], clips: pd.DataFrame, boxes: pd.DataFrame) -> Store:
    """A store with its attributes, manifest and empty views, built where no reader looks (then moved in place)."""
    if path.exists():
        shutil.rmtree(path)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)  # mode "w" empties the folder: do it first
    (path / "manifest").mkdir()
    (path / "done").mkdir()
    for name, schema in mf.FILES.items():
        (path / "manifest" / name).write_bytes(mf.parquet_bytes(clips if name == "clips.parquet" else boxes, schema))
    views_group = group.create_group("views")
    for view in attrs["views"]:
        views_group.create_group(view)
    group.attrs.update(dict(attrs))
    return Store(path)


def _resume(
    path: Path, stored: Mapping[str, Any], attrs: Mapping[str, Any], clips: pd.DataFrame, boxes: pd.DataFrame
) -> Store:
    """Reopen a store of the same attributes: rewrite a damaged manifest, drop records that no longer hold."""
    if not (path / "done").is_dir() or not all((path / "views" / v / "zarr.json").exists() for v in attrs["views"]):
        return _rebuild(path, attrs, clips, boxes, "part of its layout (done/, views/) is missing")
    rewritten = False
    for name, schema in mf.FILES.items():
        want = mf.parquet_bytes(clips if name == "clips.parquet" else boxes, schema)
        file = path / "manifest" / name
        try:
            have: bytes | None = file.read_bytes()
        except OSError:
            have = None
        if have != want:
            log.warning(
                "store %s: %s %s; rewriting it from the data set",
                path,
                file,
                "is missing" if have is None else "differs from the manifest the configuration gives (damaged?)",
            )
            file.parent.mkdir(exist_ok=True)
            _write_atomic(file, want)
            rewritten = True
    store = Store(path, stored)
    if rewritten:
        store._resign_manifest()
    store.drop_unusable_records()
    log.info("resuming store %s: %d/%d shards done", path, len(store.completed_shards()), store.num_shards)
    return store


def _rebuild(path: Path, attrs: Mapping[str, Any], clips: pd.DataFrame, boxes: pd.DataFrame, reason: str) -> Store:
    """A fresh store from the configuration that adopts the old store's shards whose records fit and whose
    checksums all match (the only ones that can be trusted without the old attributes), then replaces it."""
    log.warning(
        "store %s: %s; rebuilding it from the configuration, keeping the finished shards whose checksums match",
        path,
        reason,
    )
    tmp = path.with_name(path.name + ".creating")
    fresh = _create_skeleton(tmp, attrs, clips, boxes)
    kept, foreign = [], 0
    files = sorted((path / "done").glob("*.json")) if (path / "done").is_dir() else []
    for file in files:
        shard = _shard_of(file)
        record, problem = _load_record(file)
        problem = f"it {problem}" if problem else ""
        if record is not None:
            if not _is_legacy(record) and record.get("attributes") != fresh.attributes_digest:
                foreign += 1
            problem = _record_fit(
                shard, record, shards=fresh.shards, views=fresh.views, attributes=fresh.attributes_digest, manifest=None
            )
            problem = f"it {problem}" if problem else ""
            if not problem and _is_legacy(record):
                problem = "it holds no checksums, so it cannot be trusted"
            if not problem:
                problem = "; ".join(_file_problems(path, record, read=True))
        if problem or record is None or shard is None:
            log.warning("store %s: not keeping completion record %s: %s", path, file.name, problem)
            continue
        for view in fresh.views:
            os.replace(path / "views" / view / f"{shard:05d}", tmp / "views" / view / f"{shard:05d}")
        _write_atomic(tmp / "done" / file.name, _signed_record({**record, "manifest": fresh.manifest_sums}))
        kept.append(shard)
    if foreign and not kept:
        shutil.rmtree(tmp)
        raise StoreMismatchError(
            f"store {path}: {reason}, and its {foreign} finished shard(s) were written with another configuration "
            f"than the one asked for; restore the configuration that wrote it, or delete {path} to extract it afresh"
        )
    if kept and (path / "failures.parquet").exists():
        os.replace(path / "failures.parquet", tmp / "failures.parquet")
    old = path.with_name(path.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old)
    log.info("store %s rebuilt: kept %d of %d finished shard(s)", path, len(kept), len(files))
    return Store(path)


def _record_digests(path: Path) -> set[str]:
    """The attribute digests of a store's readable completion records."""
    done = path / "done"
    digests = set()
    for file in sorted(done.glob("*.json")) if done.is_dir() else []:
        record, _ = _load_record(file)
        if record is not None and not _is_legacy(record):
            digests.add(str(record.get("attributes")))
    return digests


def _refuse_mismatch(path: Path, stored: Mapping[str, Any], expected_fingerprint: Mapping[str, Any]) -> NoReturn:
    """Raise the one-line refusal of a store of another spec version or configuration, naming what differs."""
    if stored.get("spec_version") != SPEC_VERSION:
        raise StoreMismatchError(_spec_message(path, stored))
    diffs = fingerprint_differences(stored["fingerprint"], expected_fingerprint)
    raise StoreMismatchError(
        f"store {path} was written with another configuration:\n  "
        + "\n  ".join(diffs or ["(its attributes differ)"])
        + "\nDelete it or write to another path."
    )


def _spec_message(path: Path, attrs: Mapping[str, Any]) -> str:
    return (
        f"store {path} was written with cache spec version {attrs.get('spec_version')!r}; this code reads "
        f"{SPEC_VERSION!r} and can neither read nor resume it. Delete {path}, then run "
        f"`pipeline extract{_cli_args(attrs.get('fingerprint'))}` to write it again"
    )


def open_store(path: Path, expected_fingerprint: Mapping[str, Any] | None = None) -> Store:
    """Open a store, refusing another spec version or (when given) another fingerprint, naming the fields.

    Cheap: the attributes, the manifest and (on first use) the completion records are read and checked against
    each other, the chunks are not (that is ``pipeline verify``). A missing, truncated or damaged file is a
    one-line :class:`StoreError` naming it and what to run.
    """
    path = Path(path)
    attrs = _read_attributes(path)
    if attrs.get("spec_version") != SPEC_VERSION:
        raise StoreMismatchError(_spec_message(path, attrs))
    if expected_fingerprint is not None and fingerprint_differences(attrs["fingerprint"], expected_fingerprint):
        _refuse_mismatch(path, attrs, expected_fingerprint)
    return Store(path, attrs)


def _try_attributes(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The group attributes from ``zarr.json`` and "", or None and what is wrong with the file."""
    file = path / "zarr.json"
    try:
        meta = json.loads(file.read_bytes())
    except FileNotFoundError:
        return None, "is missing"
    except OSError as err:
        return None, f"is unreadable ({err.strerror or err})"
    except ValueError as err:
        return None, f"is truncated or not JSON ({err})"
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    if not isinstance(attrs, dict) or meta.get("node_type") != "group" or meta.get("zarr_format") != 3:
        return None, "is not the metadata of a Zarr v3 group"
    if attrs.get("spec_version") == SPEC_VERSION:
        missing = [key for key in ATTRIBUTES if key not in attrs]
        if missing:
            return None, f"lacks the attribute(s) {', '.join(missing)}"
        if not isinstance(attrs["fingerprint"], dict):
            return None, "holds a fingerprint that is not a mapping"
    return attrs, ""


def _read_attributes(path: Path) -> dict[str, Any]:
    """The group attributes, or a one-line :class:`StoreError` naming the file and the command that rebuilds it."""
    attrs, problem = _try_attributes(path)
    if attrs is not None:
        return attrs
    if problem == "is missing" and not (path.is_dir() and any(path.iterdir())):
        raise StoreError(f"no feature store at {path} (run `pipeline extract` first)")
    raise StoreError(
        f"store {path}: {path / 'zarr.json'} {problem}; run the `pipeline extract` that wrote the store again to "
        "rebuild it (finished shards whose checksums match are kept)"
    )


def _read_manifest_file(path: Path, name: str, args: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One manifest table and its file's checksum (from the same bytes), or a one-line :class:`StoreError`."""
    file = path / "manifest" / name
    fix = f"run `pipeline extract{args}` to rewrite it from the data set (finished shards are kept)"
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"store {path}: {file} is missing; {fix}") from None
    except OSError as err:
        raise StoreError(f"store {path}: {file} is unreadable ({err.strerror or err}); {fix}") from err
    try:
        return mf.read_parquet_bytes(data), _bytes_sum(data)
    except Exception as err:  # noqa: BLE001 - whatever pyarrow raises, the file is unusable
        raise StoreError(f"store {path}: {file} is damaged ({type(err).__name__}: {err}); {fix}") from err


# ---- one writer per store ---------------------------------------------------------------------------------------
def lock_path(path: Path) -> Path:
    """The lock file of a store: beside it, since a rebuild replaces the store's folder."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def lock_store(path: Path) -> Iterator[Path]:
    """Hold the store's advisory lock for the ``with`` block (one writer per store), or refuse at once.

    ``flock`` on :func:`lock_path`: the kernel releases it when its process dies, so a lock file left by a killed
    run is taken over (and the takeover logged); the file names its holder (pid, host, start, command), which a
    refused run quotes. Dask workers write under the lock of the coordinator that hands them shards, so only the
    process that runs the extraction (or a repair) takes it.
    """
    import fcntl  # POSIX only: imported here so that reading a store needs no fcntl

    file = lock_path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreLockedError(
                f"store {path} is being written by another process ({_describe_holder(holder)}); wait for it to "
                f"finish, or stop it, then rerun (its lock is {file})"
            ) from None
        except OSError as err:
            os.close(fd)
            raise StoreError(f"cannot lock store {path} ({err.strerror or err}) with {file}") from err
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(file))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its last holder removed the file between our open and our lock: lock the new one
    previous = _read_holder(fd)
    pid, here = previous.get("pid"), previous.get("host") == socket.gethostname()
    if here and isinstance(pid, int) and pid != os.getpid() and _alive(pid):  # flock free, holder alive: no lock?
        os.close(fd)
        raise StoreLockedError(
            f"store {path}: its lock file {file} names {_describe_holder(previous)}, which is still running, yet "
            f"the lock is free (does this file system support locks?); if that process is not writing the store, "
            f"delete {file} and rerun"
        )
    try:
        if previous:
            gone = here and isinstance(pid, int) and not _alive(pid)
            log.warning(
                "store %s: taking over the lock left by %s, which %s",
                path,
                _describe_holder(previous),
                "is no longer running" if gone else "no longer holds it",
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield file
    finally:
        with contextlib.suppress(OSError):
            file.unlink()  # while still holding it: a waiter then retries on a new file (see the loop above)
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe_holder(holder: Mapping[str, Any]) -> str:
    if not holder:
        return "a process that has not written its name yet"
    since = f", since {holder['since']}" if holder.get("since") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')}{since}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
