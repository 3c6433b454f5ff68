"""The manifest: the Parquet index of a store's two row spaces (clips and boxes).

Boxes are grouped contiguously per clip: clip ``i`` owns box rows ``box_start[i] .. box_start[i] + box_count[i]``.
Coordinates are kept twice: normalised to the original frame (``x1..y2``, AVA convention) and on the padded
feature map (``fx1..fy2``, continuous map cells: pixel / stride on the network's input canvas), which is
what RoIAlign consumes and what heads that relate a box to the map read (view ``box_on_map``).
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cache_spec.errors import InputError

CLIP_SCHEMA = pa.schema(
    [
        ("clip_index", pa.int64()),
        ("video_id", pa.string()),
        ("timestamp", pa.int64()),
        ("frame_h", pa.int32()),
        ("frame_w", pa.int32()),
        ("valid_h", pa.int32()),  # rows of the feature map that hold image, the rest is padding
        ("valid_w", pa.int32()),
        ("box_start", pa.int64()),
        ("box_count", pa.int32()),
        ("shard", pa.int32()),
    ]
)

BOX_SCHEMA = pa.schema(
    [
        ("box_index", pa.int64()),
        ("clip_index", pa.int64()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("fx1", pa.float32()),
        ("fy1", pa.float32()),
        ("fx2", pa.float32()),
        ("fy2", pa.float32()),
        ("source", pa.string()),  # "gt" or "det"
        ("score", pa.float32()),  # detector score; 1.0 for ground truth
        ("person_id", pa.int64()),  # -1 where unknown
        ("labels", pa.list_(pa.int32())),  # action ids (for detections: those of the matched GT box)
    ]
)

BOX_SOURCES = ("gt", "det")
FILES = {"clips.parquet": CLIP_SCHEMA, "boxes.parquet": BOX_SCHEMA}  # manifest/<name> in a store


class ManifestError(InputError, ValueError):
    """A manifest that breaks the row-space contract."""


def to_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Convert ``frame`` to an Arrow table with exactly ``schema``'s columns and types."""
    missing = [n for n in schema.names if n not in frame.columns]
    if missing:
        raise ManifestError(f"manifest is missing column(s) {missing}")
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def parquet_bytes(frame: pd.DataFrame, schema: pa.Schema) -> bytes:
    """The Parquet file of ``frame`` as bytes: the same table always gives the same bytes (with one pyarrow), so a
    manifest rebuilt from the data set can be compared with, and checksummed like, the one a store holds."""
    sink = pa.BufferOutputStream()
    pq.write_table(to_table(frame, schema), sink)
    return bytes(sink.getvalue().to_pybytes())


def read_parquet_bytes(data: bytes) -> pd.DataFrame:
    """A manifest table from the bytes of its Parquet file (read once, so they can be checksummed as well)."""
    return pd.read_parquet(io.BytesIO(data))


def validate(clips: pd.DataFrame, boxes: pd.DataFrame) -> None:
    """Check the contiguity contract between the clip and box row spaces."""
    n_clips, n_boxes = len(clips), len(boxes)
    if not np.array_equal(clips["clip_index"].to_numpy(), np.arange(n_clips)):
        raise ManifestError("clip_index must be 0..n_clips-1 in order")
    if not np.array_equal(boxes["box_index"].to_numpy(), np.arange(n_boxes)):
        raise ManifestError("box_index must be 0..n_boxes-1 in order")
    counts = clips["box_count"].to_numpy(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if n_clips else np.zeros(0, np.int64)
    if not np.array_equal(clips["box_start"].to_numpy(np.int64), starts) or counts.sum() != n_boxes:
        raise ManifestError("box_start/box_count must tile the box rows contiguously in clip order")
    if not np.array_equal(boxes["clip_index"].to_numpy(), np.repeat(np.arange(n_clips), counts)):
        raise ManifestError("boxes.clip_index disagrees with clips.box_start/box_count")
    bad = set(boxes["source"].unique()) - set(BOX_SOURCES)
    if bad:
        raise ManifestError(f"unknown box source(s) {sorted(bad)}; expected {BOX_SOURCES}")


def digest(clips: pd.DataFrame, boxes: pd.DataFrame) -> str:
    """A content hash of the manifest, part of the store fingerprint (another box set is another store)."""
    h = hashlib.sha256()
    for frame, schema in ((clips, CLIP_SCHEMA), (boxes, BOX_SCHEMA)):
        # Arrow IPC bytes of the table without pandas metadata: the data, not the pandas version that made it
        table = to_table(frame, schema).replace_schema_metadata(None).combine_chunks()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()[:16]
