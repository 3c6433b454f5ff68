"""Feature banks: their own row space of entries keyed by (video, timestamp, actor), ordered by video then time.

Layout of ``<name>.bank/``::

    zarr.json                 group attributes: bank spec version, kind, fingerprint, row shape, dtype, entries,
                              rows per chunk and the SHA-256 of the manifest file
    manifest/entries.parquet  one row per entry: entry_index, video_id, timestamp, clip_row, actor, x1..y2, score, bank
    features/                 one Zarr v3 array [n, *shape], uncompressed, chunks of ``chunk_rows`` whole rows

Why this order: long-term feature banks (LFB), ACAR's actor-context feature bank and the memory heads read, for
a clip at time ``t``, every entry of the same video in ``[t - w, t + w]``. Sorted by video then time, that is one
contiguous row range found by two binary searches, and a chunk holds a few MiB of consecutive rows, so a window
is one or two chunk reads when the bank is streamed from disk instead of held in memory.

Why a fingerprint: a bank is derived data. It records the store it read and, for learned banks (ACFB), the digest
of the head checkpoint that wrote it; :func:`open_bank` refuses one written from other inputs, naming the field.
A bank is written to ``<name>.bank.partial`` and renamed when complete, so a half-written bank never opens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from cache_spec.store import DTYPES, StoreError, StoreMismatchError

log = logging.getLogger(__name__)

BANK_SPEC_VERSION = "1.0"
ATTRIBUTES = ("bank_spec_version", "kind", "fingerprint", "shape", "dtype", "num_entries", "chunk_rows", "manifest")
MANIFEST_FILE = "manifest/entries.parquet"
FEATURES = "features"
DEFAULT_CHUNK_BYTES = 4 << 20  # a 60 s LFB window of R50 roi_pooled entries (~1.4 MB) spans one or two chunks

ENTRY_SCHEMA = pa.schema(
    [
        ("entry_index", pa.int64()),
        ("video_id", pa.string()),
        ("timestamp", pa.float64()),  # seconds; fractional for data sets annotated at other rates than 1 Hz
        ("clip_row", pa.int64()),  # the store clip row the entry was computed from
        ("actor", pa.int64()),  # the entry's actor within its clip (box order when not given)
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("score", pa.float32()),
        ("bank", pa.string()),  # which bank it is (its kind), so a concatenation of manifests stays unambiguous
    ]
)
REQUIRED_COLUMNS = ("video_id", "timestamp", "clip_row", "x1", "y1", "x2", "y2", "score")


class BankError(StoreError):
    """A bank that cannot be written or used as asked (bad entries, missing or damaged files)."""


class BankMismatchError(BankError, StoreMismatchError):
    """A bank written from other inputs (store, head checkpoint) or of another kind than the one asked for."""


def fingerprint_differences(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Human-readable list of fingerprint fields where a bank and what a caller expects differ."""
    diffs = []
    for key in sorted(set(stored) | set(expected)):
        a, b = stored.get(key, "<absent>"), expected.get(key, "<absent>")
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            diffs.append(f"{key}: bank has {a!r}, asked for {b!r}")
    return diffs


# ---- writing ------------------------------------------------------------------------------------------------------
def _sorted_entries(entries: pd.DataFrame, kind: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The manifest in bank order and the input row of each entry: video, time, clip row, actor, input order."""
    missing = [c for c in REQUIRED_COLUMNS if c not in entries.columns]
    if missing:
        raise BankError(f"bank entries lack column(s) {missing}; expected {list(REQUIRED_COLUMNS)} (+ actor)")
    frame = entries.reset_index(drop=True)
    timestamps = frame["timestamp"].to_numpy(np.float64)
    if not np.isfinite(timestamps).all():
        bad = int(np.flatnonzero(~np.isfinite(timestamps))[0])
        raise BankError(f"bank entry {bad} has timestamp {timestamps[bad]!r}; timestamps must be finite")
    clip_rows = frame["clip_row"].to_numpy(np.int64)
    if "actor" in frame.columns:
        actors = frame["actor"].to_numpy(np.int64)
    else:  # the entry's position among its clip's entries, in input order
        actors = frame.groupby(clip_rows, sort=False).cumcount().to_numpy(np.int64)
    videos = frame["video_id"].astype(str).to_numpy()
    order = np.lexsort((np.arange(len(frame)), actors, clip_rows, timestamps, videos))  # last key sorts first
    out = pd.DataFrame(
        {
            "entry_index": np.arange(len(frame), dtype=np.int64),
            "video_id": videos[order],
            "timestamp": timestamps[order],
            "clip_row": clip_rows[order],
            "actor": actors[order],
            **{c: frame[c].to_numpy(np.float32)[order] for c in ("x1", "y1", "x2", "y2", "score")},
            "bank": np.full(len(frame), kind, dtype=object),
        }
    )
    return out, order


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    """The manifest file as bytes: the same entries give the same bytes (with one pyarrow)."""
    table = pa.Table.from_pandas(frame[ENTRY_SCHEMA.names], schema=ENTRY_SCHEMA, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def create_bank(
    path: Path | str,
    kind: str,
    fingerprint: Mapping[str, Any],
    entries: pd.DataFrame,
    features: np.ndarray,
    dtype: str = "float16",
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    overwrite: bool = False,
) -> Bank:
    """Write a bank of ``entries`` (one per row of ``features``) in bank order, and open it.

    ``fingerprint`` must name the ``store`` the entries were computed from; a learned bank adds the digest of its
    head checkpoint (``head_checkpoint``). The same input always gives the same bytes on disk.
    """
    path = Path(path)
    if not kind:
        raise BankError("a bank needs a kind (e.g. 'lfb', 'acfb')")
    if "store" not in fingerprint:
        raise BankError(
            f"bank {path}: the fingerprint must name the store it read (key 'store'), got {dict(fingerprint)}"
        )
    if dtype not in DTYPES:
        raise BankError(f"bank {path}: dtype {dtype!r} is not one of {DTYPES}")
    features = np.asarray(features)
    if features.ndim < 1 or len(features) != len(entries):
        raise BankError(f"bank {path}: {len(entries)} entries but features of shape {features.shape}")
    if path.exists() and not overwrite:
        raise BankError(f"bank {path} exists; pass overwrite=True (or remove it) to rewrite it")
    manifest, order = _sorted_entries(entries, kind)
    shape = tuple(int(d) for d in features.shape[1:])
    row_bytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    chunk_rows = max(1, int(chunk_bytes) // row_bytes)
    manifest_bytes = _parquet_bytes(manifest)
    attrs = {
        "bank_spec_version": BANK_SPEC_VERSION,
        "kind": kind,
        "fingerprint": json.loads(json.dumps(dict(fingerprint), sort_keys=True, default=str)),
        "shape": list(shape),
        "dtype": dtype,
        "num_entries": len(manifest),
        "chunk_rows": chunk_rows,
        "manifest": hashlib.sha256(manifest_bytes).hexdigest(),
    }
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        group = zarr.open_group(str(partial), mode="w", zarr_format=3)
        group.attrs.update(attrs)
        array = group.create_array(
            FEATURES,
            shape=(len(manifest), *shape),
            chunks=(chunk_rows, *shape),
            dtype=dtype,
            compressors=None,
            fill_value=0,
            config={"write_empty_chunks": True},  # every chunk has its file, so a reader can map it directly
        )
        for start in range(0, len(manifest), chunk_rows):  # chunk by chunk: the input may be a memory map
            stop = min(start + chunk_rows, len(manifest))
            array[start:stop] = np.asarray(features[order[start:stop]], dtype=dtype)
        (partial / "manifest").mkdir()
        (partial / MANIFEST_FILE).write_bytes(manifest_bytes)
        if path.exists():
            shutil.rmtree(path)
        os.replace(partial, path)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise BankError(f"bank {path}: writing failed ({type(err).__name__}: {err})") from err
    log.info("wrote %s bank %s: %d entries of %s %s", kind, path, len(manifest), shape, dtype)
    return Bank(path)


# ---- reading ------------------------------------------------------------------------------------------------------
def _is_raw(meta: Mapping[str, Any]) -> bool:
    """True when every chunk file of an array is its raw little-endian C-order rows (mappable without zarr)."""
    codecs = meta.get("codecs", [])
    return (
        meta.get("chunk_key_encoding", {}).get("name") == "default"
        and meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/") == "/"
        and len(codecs) == 1
        and codecs[0]["name"] == "bytes"
        and codecs[0].get("configuration", {}).get("endian", "little") == "little"
        and not meta.get("storage_transformers")
    )


class Bank:
    """An opened bank: its manifest in memory, its features in memory or mapped from disk (open with :func:`open_bank`).

    Row ``i`` of the manifest is row ``i`` of the features. ``video_starts[k] .. video_starts[k + 1]`` are the rows of
    ``videos[k]`` (sorted), and ``timestamps`` is sorted within each such range.
    """

    def __init__(self, path: Path | str, memory_budget_bytes: int = 2 << 30):
        self.path = Path(path)
        try:
            attrs: dict[str, Any] = json.loads((self.path / "zarr.json").read_text())["attributes"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise BankError(f"bank {self.path} is missing or not a bank ({type(err).__name__}: {err})") from err
        lacking = [a for a in ATTRIBUTES if a not in attrs]
        if lacking:
            raise BankError(f"bank {self.path}: zarr.json lacks attribute(s) {lacking}; rewrite the bank")
        if attrs["bank_spec_version"] != BANK_SPEC_VERSION:
            raise BankMismatchError(
                f"bank {self.path} has spec version {attrs['bank_spec_version']}, this code reads {BANK_SPEC_VERSION}"
            )
        self.kind: str = attrs["kind"]
        self.fingerprint: dict[str, Any] = attrs["fingerprint"]
        self.shape: tuple[int, ...] = tuple(attrs["shape"])
        self.dtype = np.dtype(attrs["dtype"])
        self.chunk_rows: int = attrs["chunk_rows"]
        try:
            data = (self.path / MANIFEST_FILE).read_bytes()
        except OSError as err:
            raise BankError(f"bank {self.path}: manifest unreadable ({err}); rewrite the bank") from err
        if hashlib.sha256(data).hexdigest() != attrs["manifest"]:
            raise BankError(f"bank {self.path}: {MANIFEST_FILE} is not the one written with zarr.json; rewrite it")
        self.entries = pq.read_table(pa.BufferReader(data)).to_pandas()
        self.num_entries = len(self.entries)
        if self.num_entries != attrs["num_entries"]:
            raise BankError(
                f"bank {self.path}: {self.num_entries} manifest rows, zarr.json says {attrs['num_entries']}"
            )
        videos = self.entries["video_id"].to_numpy().astype(str)
        self.timestamps = self.entries["timestamp"].to_numpy(np.float64)
        self.clip_rows = self.entries["clip_row"].to_numpy(np.int64)
        change = np.flatnonzero(videos[1:] != videos[:-1]) + 1 if self.num_entries else np.zeros(0, np.int64)
        self.videos = videos[np.concatenate([[0], change])] if self.num_entries else np.zeros(0, dtype=str)
        self.video_starts = np.concatenate([[0], change, [self.num_entries]]).astype(np.int64)
        same_video = videos[1:] == videos[:-1]
        if (self.videos[1:] <= self.videos[:-1]).any() or (np.diff(self.timestamps)[same_video] < 0).any():
            raise BankError(f"bank {self.path}: entries are not ordered by video then time; rewrite the bank")
        self._array_path = self.path / FEATURES
        self._meta = json.loads((self._array_path / "zarr.json").read_text())
        if tuple(self._meta["shape"]) != (self.num_entries, *self.shape):
            raise BankError(
                f"bank {self.path}: features have shape {self._meta['shape']}, expected "
                f"{[self.num_entries, *self.shape]}"
            )
        self._maps: dict[int, np.ndarray] = {}
        self._memory: np.ndarray | None = None
        if self.nbytes <= memory_budget_bytes:
            self._memory = self._read_range(0, self.num_entries)
        log.debug(
            "opened bank %s (%d entries, %s)", self.path, self.num_entries, "memory" if self.in_memory else "disk"
        )

    @property
    def nbytes(self) -> int:
        """Bytes of all features: what holding the bank in memory costs."""
        return self.num_entries * int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    # ---- features ---------------------------------------------------------------------------------------------
    def _chunk(self, k: int) -> np.ndarray:
        """Chunk ``k`` (``chunk_rows`` rows; the last one is padded) mapped from its file, mapped once."""
        data = self._maps.get(k)
        if data is None:
            file = self._array_path.joinpath("c", str(k), *["0"] * len(self.shape))
            shape = (self.chunk_rows, *self.shape)
            nbytes = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
            size = file.stat().st_size if file.exists() else -1
            if size != nbytes:
                raise BankError(f"bank {self.path}: chunk {file} has {size} bytes, expected {nbytes}")
            data = np.memmap(file, dtype=self.dtype.newbyteorder("<"), mode="r", shape=shape)
            self._maps[k] = data
        return data

    def _read_range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a new array, read chunk by chunk."""
        if not _is_raw(self._meta):
            return np.asarray(zarr.open_array(str(self._array_path), mode="r")[start:stop], dtype=self.dtype)
        out = np.empty((stop - start, *self.shape), dtype=self.dtype)
        for k in range(start // self.chunk_rows, -(-stop // self.chunk_rows)):
            lo, hi = max(start, k * self.chunk_rows), min(stop, (k + 1) * self.chunk_rows)
            out[lo - start : hi - start] = self._chunk(k)[lo - k * self.chunk_rows : hi - k * self.chunk_rows]
        return out

    def features(self, rows: np.ndarray) -> np.ndarray:
        """Features of bank ``rows`` (any order, repeats allowed), from memory or from the chunks they fall in."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_entries):
            raise IndexError(f"bank {self.path}: rows must lie in 0..{self.num_entries - 1}")
        if self._memory is not None:
            return self._memory[rows]
        if not _is_raw(self._meta):
            return np.asarray(zarr.open_array(str(self._array_path), mode="r").oindex[rows], dtype=self.dtype)
        out = np.empty((len(rows), *self.shape), dtype=self.dtype)
        chunks = rows // self.chunk_rows
        for k in np.unique(chunks):  # a window is one contiguous range: one or two chunks
            hit = chunks == k
            out[hit] = self._chunk(int(k))[rows[hit] - k * self.chunk_rows]
        return out

    def iter_blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, features)`` over the whole bank in row order: one sequential read per block."""
        step = block_rows or self.chunk_rows
        for start in range(0, self.num_entries, step):
            stop = min(start + step, self.num_entries)
            if self._memory is not None:
                yield start, self._memory[start:stop]
            else:
                yield start, self._read_range(start, stop)

    # ---- windows ----------------------------------------------------------------------------------------------
    def video_rows(self, video_id: str) -> tuple[int, int]:
        """``(start, stop)`` rows of ``video_id`` (an empty range for a video without entries)."""
        k = int(np.searchsorted(self.videos, video_id))
        if k < len(self.videos) and self.videos[k] == video_id:
            return int(self.video_starts[k]), int(self.video_starts[k + 1])
        return 0, 0

    def window_rows(self, video_id: str, t: float, w: float, exclude_clip_row: int | None = None) -> np.ndarray:
        """Rows of ``video_id`` with timestamp in ``[t - w, t + w]`` (inclusive), without the query clip's own."""
        rows, _ = self.windows(
            np.array([video_id]), np.array([t], np.float64), w, None if exclude_clip_row is None else [exclude_clip_row]
        )
        return rows

    def windows(
        self,
        video_ids: np.ndarray | list[str],
        ts: np.ndarray | list[float],
        w: float | np.ndarray,
        exclude_clip_rows: np.ndarray | list[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Windows of a batch of queries: ``(rows, query_index)``, flat bank rows and the query each belongs to.

        Rows are grouped by query in query order, ascending within a query. ``w`` is one half-width or one per
        query. ``exclude_clip_rows[i]`` (negative: none) drops query ``i``'s own clip's entries, so a head does
        not attend to the actors it is classifying. Two binary searches per query, one call per distinct video.
        """
        videos = np.asarray(video_ids).astype(str)
        times = np.asarray(ts, dtype=np.float64)
        if videos.shape != times.shape or videos.ndim != 1:
            raise ValueError(f"video_ids {videos.shape} and ts {times.shape} must be 1-d and of one length")
        half = np.broadcast_to(np.asarray(w, dtype=np.float64), times.shape)
        lo = np.zeros(len(times), np.int64)
        hi = np.zeros(len(times), np.int64)
        if self.num_entries and len(times):
            k = np.searchsorted(self.videos, videos)
            k_in = np.minimum(k, len(self.videos) - 1)
            known = (k < len(self.videos)) & (self.videos[k_in] == videos)
            for v in np.unique(k[known]):
                q = np.flatnonzero(known & (k == v))
                start, stop = self.video_starts[v], self.video_starts[v + 1]
                segment = self.timestamps[start:stop]
                lo[q] = start + np.searchsorted(segment, times[q] - half[q], side="left")
                hi[q] = start + np.searchsorted(segment, times[q] + half[q], side="right")
        counts = np.maximum(hi - lo, 0)
        query_index = np.repeat(np.arange(len(times), dtype=np.int64), counts)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(times) else counts
        rows = np.repeat(lo - first, counts) + np.arange(int(counts.sum()), dtype=np.int64)
        if exclude_clip_rows is not None:
            exclude = np.asarray(exclude_clip_rows, dtype=np.int64)
            if exclude.shape != times.shape:
                raise ValueError(f"exclude_clip_rows {exclude.shape} must have one entry per query {times.shape}")
            keep = self.clip_rows[rows] != exclude[query_index]
            rows, query_index = rows[keep], query_index[keep]
        return rows, query_index


def open_bank(
    path: Path | str,
    expected_fingerprint: Mapping[str, Any] | None = None,
    *,
    kind: str | None = None,
    memory_budget_bytes: int = 2 << 30,
) -> Bank:
    """Open a bank, refusing one of another kind or written from other inputs than ``expected_fingerprint``."""
    bank = Bank(path, memory_budget_bytes=memory_budget_bytes)
    if kind is not None and bank.kind != kind:
        raise BankMismatchError(f"bank {bank.path} is a {bank.kind!r} bank, asked for a {kind!r} bank")
    if expected_fingerprint is not None:
        expected = json.loads(json.dumps(dict(expected_fingerprint), sort_keys=True, default=str))
        diffs = fingerprint_differences(bank.fingerprint, expected)
        if diffs:
            raise BankMismatchError(
                f"bank {bank.path} was written from other inputs ({'; '.join(diffs)}); rewrite it with "
                "`pipeline bank` from the current store and checkpoint"
            )
    return bank
