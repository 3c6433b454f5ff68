"""Writing the data set: videos, AVA's CSV tables and label map, and the dense (ACT/MOC) ground truth.

Everything here is a function of the scenes; nothing is drawn except which keyframes are excluded, from a
stream of its own per split, so the per-video streams are unaffected.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
import pandas as pd
from tqdm import tqdm

from cache_spec.errors import InputError
from stages.data.act import DenseDataset, dense_dataset_from_dict, write_dense_dataset
from stages.data.ava import write_annotations, write_excluded_timestamps, write_label_map, write_predicted_boxes
from stages.data.synth.labels import DENSE_LABELS, SYNTH_CLASSES
from stages.data.synth.plan import SPLITS, Scene, SynthConfig
from stages.data.synth.scenes import make_scenes
from stages.data.synth.sprites import render

logger = logging.getLogger(__name__)

MARKER = "synth.json"  # names the files a synthetic set consists of, so a rerun replaces exactly those


class SynthOutputError(InputError, ValueError):
    """The output folder holds something other than an earlier synthetic set."""


def _video_codec() -> tuple[str, dict[str, str]]:
    """H.264 at near-lossless quality when the PyAV build has x264, else MPEG-4 part 2 at a high bitrate.

    One encoder thread: x264's frame threading makes the bytes vary from run to run, which would change the data
    set's DVC hash (and rerun every stage) on each ``dvc repro``.
    """
    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # PyAV raises its own UnknownCodecError subclasses, which vary between versions
        return "mpeg4", {"qscale": "2"}
    return "libx264", {"crf": "16", "preset": "fast", "threads": "1"}


def write_video(frames: np.ndarray, path: Path, fps: int) -> None:
    """Encode RGB frames to an mp4 (yuv420p)."""
    codec, options = _video_codec()
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        assert isinstance(stream, av.VideoStream)  # a video codec name gives a video stream
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = 4_000_000
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def split_tables(scenes: list[Scene], config: SynthConfig, split: str) -> dict[str, pd.DataFrame | None]:
    """Annotations (excluded keyframes removed, as in AVA), excluded keyframes and predicted boxes.

    ``predicted_boxes`` is None for a split without videos.
    """
    chosen = [s for s in scenes if s.split == split]
    keyframes = pd.DataFrame(
        [(s.video_id, t) for s in chosen for t in s.keyframes], columns=["video_id", "timestamp"]
    ).astype({"timestamp": np.int64})
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, SPLITS.index(split), 1_000_003]))
    count = round(config.excluded_fraction * len(keyframes))
    picked = np.sort(rng.choice(len(keyframes), size=count, replace=False)) if count else np.array([], int)
    excluded = keyframes.iloc[picked].reset_index(drop=True)
    annotations = pd.concat([s.annotations for s in chosen], ignore_index=True) if chosen else _empty_annotations()
    keys = annotations["video_id"] + "@" + annotations["timestamp"].astype(str)
    dropped = set(excluded["video_id"] + "@" + excluded["timestamp"].astype(str))
    annotations = annotations[~keys.isin(dropped)].reset_index(drop=True)
    predicted = pd.concat([s.predicted_boxes for s in chosen], ignore_index=True) if chosen else None
    return {"annotations": annotations, "excluded": excluded, "predicted_boxes": predicted}


def _empty_annotations() -> pd.DataFrame:
    """An annotation table without rows but with the columns and dtypes, for a split without videos."""
    columns = ["video_id", "timestamp", "x1", "y1", "x2", "y2", "action_id", "person_id"]
    return pd.DataFrame({c: pd.Series([], dtype=str if c == "video_id" else np.float64) for c in columns})


class DenseTube(NamedTuple):
    """A dense ground-truth tube: a maximal run of consecutive frames in which one actor carries one label."""

    person_id: int
    action_id: int
    rows: np.ndarray  # [n, 5] float64: 1-based frame, x1, y1, x2, y2 in pixels


def dense_tubes(scene: Scene) -> dict[int, list[DenseTube]]:
    """The tubes of one video by ACT label index (ascending), each label's tubes ordered by actor then start."""
    ids = SYNTH_CLASSES.ids
    tubes: dict[int, list[DenseTube]] = {}
    dense = scene.dense_annotations.sort_values(["action_id", "person_id", "frame"], kind="stable")
    for (action, person), group in dense.groupby(["action_id", "person_id"], sort=True):
        frames = group["frame"].to_numpy()
        rows = np.column_stack([frames + 1, group[["x1", "y1", "x2", "y2"]].to_numpy()]).astype(np.float64)
        for run in np.split(rows, np.flatnonzero(np.diff(frames) != 1) + 1):
            tubes.setdefault(ids.index(int(action)), []).append(DenseTube(int(person), int(action), run))
    return tubes


def dense_dataset(scenes: list[Scene]) -> DenseDataset:
    """The ACT/MOC ground truth of ``scenes`` (validated): one split, train videos to train, val videos to test."""
    data = {
        "labels": list(DENSE_LABELS),
        "train_videos": [[s.video_id for s in scenes if s.split == "train"]],
        "test_videos": [[s.video_id for s in scenes if s.split == "val"]],
        "nframes": {s.video_id: s.num_frames for s in scenes},
        "resolution": {s.video_id: (s.height, s.width) for s in scenes},
        "gttubes": {
            s.video_id: {label: [t.rows for t in tubes] for label, tubes in dense_tubes(s).items()} for s in scenes
        },
    }
    return dense_dataset_from_dict(data)


def _write_dense(scenes: list[Scene], out_dir: Path) -> dict[str, int]:
    """``gt.pkl`` and per-split frame-level detector boxes under ``out_dir``; returns the dense counts."""
    ds = dense_dataset(scenes)
    write_dense_dataset(ds, out_dir / "gt.pkl")
    counts: dict[str, int] = {}
    for split in SPLITS:
        chosen = [s for s in scenes if s.split == split]
        path = out_dir / f"predicted_boxes_{split}.csv"
        if chosen:
            predicted = pd.concat([s.dense_predicted_boxes for s in chosen], ignore_index=True)
            write_predicted_boxes(predicted, path)
        else:
            path.write_text("")
        counts[f"dense_{split}_tubes"] = sum(len(t) for s in chosen for t in ds.gttubes[s.video_id].values())
        counts[f"dense_{split}_frames"] = sum(len(s.labelled_frames) for s in chosen)
        counts[f"dense_{split}_predicted_boxes"] = sum(len(s.dense_predicted_boxes) for s in chosen)
    return counts


def _write_split(scenes: list[Scene], config: SynthConfig, split: str, out_dir: Path) -> dict[str, int]:
    """One split's AVA CSVs under ``out_dir``; returns its counts."""
    tables = split_tables(scenes, config, split)
    ann, excluded, predicted = tables["annotations"], tables["excluded"], tables["predicted_boxes"]
    assert ann is not None and excluded is not None
    write_annotations(ann, out_dir / "annotations" / f"{split}.csv")
    write_excluded_timestamps(excluded, out_dir / f"excluded_timestamps_{split}.csv")
    if predicted is None:
        (out_dir / f"predicted_boxes_{split}.csv").write_text("")
    else:
        write_predicted_boxes(predicted, out_dir / f"predicted_boxes_{split}.csv")
    return {
        f"{split}_videos": sum(s.split == split for s in scenes),
        f"{split}_keyframes": int(ann[["video_id", "timestamp"]].drop_duplicates().shape[0]),
        f"{split}_boxes": int(ann[["video_id", "timestamp", "person_id"]].drop_duplicates().shape[0]),
        f"{split}_rows": len(ann),
        f"{split}_excluded": len(excluded),
        f"{split}_predicted_boxes": 0 if predicted is None else len(predicted),
    }


def _claim(out_dir: Path) -> None:
    """Make ``out_dir`` ours: refuse a folder holding anything but an earlier synthetic set, remove that set.

    This is what keeps a user's own data set safe when a path is misconfigured: nothing is deleted or overwritten
    unless the marker of an earlier run lists it.
    """
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    marker = out_dir / MARKER
    if not marker.is_file():
        raise SynthOutputError(
            f"{out_dir}: the folder exists and is not a synthetic data set (it has no {MARKER}); refusing to write "
            "into it. Point paths.synth (or --out) at a new or empty folder."
        )
    root = out_dir.resolve()
    for name in json.loads(marker.read_text())["files"]:
        path = (out_dir / name).resolve()
        if path.is_relative_to(root) and path.is_file():
            path.unlink()
    marker.unlink()


def generate(config: SynthConfig, out_dir: Path) -> dict[str, int]:
    """Write the data set in AVA's layout under ``out_dir``, its dense form under ``dense/``; return counts."""
    out_dir = Path(out_dir)
    _claim(out_dir)
    scenes = make_scenes(config)
    write_label_map(SYNTH_CLASSES, out_dir / "label_map.pbtxt")
    counts: dict[str, int] = {}
    for split in SPLITS:
        counts |= _write_split(scenes, config, split, out_dir)
    counts |= _write_dense(scenes, out_dir / "dense")
    for scene in tqdm(scenes, desc="synth videos", unit="video"):
        write_video(render(scene), out_dir / "videos" / f"{scene.video_id}.mp4", scene.fps)
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    marker = {"generator": "stages.data.synth", "config": dataclasses.asdict(config), "files": files}
    (out_dir / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    logger.info("synthetic set written to %s: %s", out_dir, counts)
    return counts
