"""Person detection on AVA keyframes with torchvision's Faster R-CNN ResNet-50 FPN v2 (``stages.models.detector``).

AVA's own pipeline feeds the action head with boxes from a COCO person detector run on every keyframe; this stage
does the same from a user checkpoint (nothing is downloaded) and writes the AVA predicted-box CSV that
``stages.extract`` reads. Which keyframes: the distinct (video, timestamp) pairs of the split's annotation file,
i.e. the keyframes that evaluation and training look at. Excluded keyframes are not in that file (AVA removes
them) and every downstream reader drops them anyway, so detecting on them would be wasted work.

The frame of keyframe ``t`` is ``round((t - time_offset_s) * fps)``, as in ``stages.data.video``. Each video is decoded
once, front to back, keeping only its keyframes. Work is resumable per video: a finished video's boxes go to
``<out>.parts/<video>.csv`` (written atomically) and are reused by a later run with the same fingerprint
(checkpoint digest, annotation digest and every setting that changes the boxes); the final CSV is assembled
from the parts at the end. A video that fails to decode is logged, listed in ``<out stem>_failures.csv`` and
retried by the next run; the other videos complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchvision.models.detection import FasterRCNN
from tqdm import tqdm

from stages.data.ava import (
    BOX_COLUMNS,
    PREDICTED_BOX_COLUMNS,
    read_annotations,
    read_predicted_boxes,
    write_predicted_boxes,
)
from stages.data.layout import DataLayout, plain_video_id
from stages.data.video import ClipSampling, VideoDecodeError, in_background, iter_keyframe_clips
from stages.models.detector import ARCHITECTURE, build_detector, load_detector_checkpoint, person_detections
from stages.models.trained_head import resolve_device

logger = logging.getLogger(__name__)

_FINGERPRINT_FILE = "fingerprint.json"
# One frame per keyframe: the keyframe itself (window 1, so the clip starts and ends at the keyframe's index).
_KEYFRAME_ONLY = ClipSampling(num_frames=1, frame_stride=1)


@dataclass(frozen=True)
class DetectConfig:
    """What decides the boxes (all of it enters the resume fingerprint) plus how to run."""

    data: DataLayout
    split: str
    out: Path  # the predicted-box CSV to write
    checkpoint: Path  # a fasterrcnn_resnet50_fpn_v2 state dict (plain, {"model": sd} or {"state_dict": sd})
    score_threshold: float = 0.5  # keep person boxes with score >= this
    nms_iou: float = 0.5  # class-wise NMS IoU
    num_classes: int = 91  # COCO (with background and the unused ids), as torchvision's COCO weights
    person_label: int = 1  # COCO's person id
    min_size: int = 800  # the detector transform's resize: short side ...
    max_size: int = 1333  # ... capped so the long side stays under this
    max_detections: int = 100  # per keyframe over all classes, before the person filter (torchvision's cap)
    rpn_pre_nms_top_n: int = 1000  # proposals per FPN level before the RPN's NMS (torchvision's test default)
    rpn_post_nms_top_n: int = 1000  # proposals kept for the box head (torchvision's test default)
    batch_frames: int = 8
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    keep_parts: bool = False  # keep <out>.parts after a complete run (it is kept anyway while videos fail)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if not 0 <= self.person_label < self.num_classes:
            raise ValueError(f"person_label {self.person_label} is not a class of num_classes={self.num_classes}")
        for name in ("min_size", "max_size", "max_detections", "rpn_pre_nms_top_n", "rpn_post_nms_top_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {self.batch_frames}")

    @property
    def parts_dir(self) -> Path:
        return Path(f"{self.out}.parts")

    @property
    def failures_path(self) -> Path:
        out = Path(self.out)
        return out.with_name(f"{out.stem}_failures.csv")


@dataclass
class DetectSummary:
    """What a run did; ``failed`` maps video id -> error for videos that must be retried."""

    out: Path
    failures_csv: Path
    videos: int
    videos_run: int
    videos_skipped: int
    keyframes_run: int
    boxes: int
    failed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings) for metrics files."""
        d = asdict(self)
        d["out"], d["failures_csv"] = str(self.out), str(self.failures_csv)
        return d


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fingerprint(config: DetectConfig, annotations: Path) -> dict[str, Any]:
    """Everything that changes the boxes of a video: a part written under another fingerprint is stale."""
    return {
        "architecture": ARCHITECTURE,
        "checkpoint_sha256": _file_digest(Path(config.checkpoint)),
        "annotations_sha256": _file_digest(annotations),
        **{
            name: getattr(config, name)
            for name in (
                "score_threshold",
                "nms_iou",
                "num_classes",
                "person_label",
                "min_size",
                "max_size",
                "max_detections",
                "rpn_pre_nms_top_n",
                "rpn_post_nms_top_n",
            )
        },
        "time_offset_s": config.data.time_offset_s,
        "time_offsets": config.data.offsets_digest(),
        "frames": config.data.frames is not None,
    }


def _prepare_parts(parts: Path, fingerprint: dict[str, Any]) -> None:
    """Create the parts folder, or empty it when its fingerprint differs (naming what changed)."""
    record = parts / _FINGERPRINT_FILE
    if record.exists():
        try:
            old = json.loads(record.read_text())
        except json.JSONDecodeError:
            old = {}
        changed = sorted(k for k in fingerprint.keys() | old.keys() if old.get(k) != fingerprint.get(k))
        if not changed:
            return
        logger.warning("%s: written with different %s; discarding its partial results", parts, ", ".join(changed))
        for part in parts.glob("*.csv"):
            part.unlink()
    parts.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(record, json.dumps(fingerprint, indent=1, sort_keys=True))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_write_boxes(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write_predicted_boxes(frame, tmp)
    os.replace(tmp, path)


def _part_path(parts: Path, video: str) -> Path:
    return parts / f"{plain_video_id(video)}.csv"


def _keyframes(annotations: Path) -> dict[str, list[float]]:
    """Video id -> sorted distinct keyframe timestamps of the split's annotations (fractional ones kept)."""
    gt = read_annotations(annotations)
    pairs = gt[["video_id", "timestamp"]].drop_duplicates().sort_values(["video_id", "timestamp"])
    return {str(v): g["timestamp"].astype(float).tolist() for v, g in pairs.groupby("video_id", sort=True)}


def _decode(layout: DataLayout, todo: Sequence[tuple[str, list[float]]]) -> Iterator[tuple]:
    """``(video, timestamp, frame, error)`` per keyframe, then ``(video, None, None, error)`` to end each video.

    A keyframe outside its video fails the video (the time offset is wrong for it), naming the keyframe.
    """
    for video, timestamps in todo:
        outside: dict[float, str] = {}
        error = ""
        try:
            clips = iter_keyframe_clips(
                layout.video(video), [float(t) for t in timestamps], _KEYFRAME_ONLY, on_outside=outside.__setitem__
            )
            for ts, frames in clips:
                yield video, ts, frames[0], ""
        except VideoDecodeError as err:
            error = str(err)
        if outside and not error:
            error = f"{len(outside)} keyframe(s) outside the video, first: {next(iter(outside.values()))}"
        yield video, None, None, error


class _Runner:
    """Runs the detector on batches of keyframes of one video and collects its person boxes."""

    def __init__(self, model: FasterRCNN, device: torch.device, config: DetectConfig) -> None:
        self.model, self.device, self.config = model, device, config

    @torch.inference_mode()
    def __call__(self, video: str, batch: list[tuple[float, np.ndarray]]) -> list[pd.DataFrame]:
        images = [torch.from_numpy(frame).to(self.device).permute(2, 0, 1).float().div_(255.0) for _, frame in batch]
        outputs = self.model(images)
        frames = []
        for (ts, frame), out in zip(batch, outputs, strict=True):
            boxes = person_detections(
                out["boxes"],
                out["scores"],
                out["labels"],
                (frame.shape[0], frame.shape[1]),
                person_label=self.config.person_label,
                score_threshold=self.config.score_threshold,
                nms_iou=self.config.nms_iou,
            )
            boxes.insert(0, "timestamp", ts)
            boxes.insert(0, "video_id", video)
            frames.append(boxes)
        return frames


def _as_predicted(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-keyframe boxes into the predicted-box layout (empty action id)."""
    columns = ["video_id", "timestamp", *BOX_COLUMNS, "score"]
    frames = [f for f in frames if len(f)]
    if frames:
        out = pd.concat(frames, ignore_index=True)[columns]
    else:
        out = pd.DataFrame({c: pd.Series([], dtype=str if c == "video_id" else np.float64) for c in columns})
    out["timestamp"] = out["timestamp"].astype(np.int64)
    out["action_id"] = pd.array([pd.NA] * len(out), dtype="Int64")
    return out[PREDICTED_BOX_COLUMNS]


def detect(config: DetectConfig, progress: Callable[..., Any] = tqdm) -> DetectSummary:
    """Write the predicted-box CSV of one split; finished videos of an interrupted run are not redone."""
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _detect(config, progress)
    finally:
        torch.set_num_threads(threads)  # the setting is process-wide: leave callers' as it was


def _detect(config: DetectConfig, progress: Callable[..., Any]) -> DetectSummary:
    annotations = config.data.annotations_path(config.split)
    keyframes = _keyframes(annotations)
    device = resolve_device(config.device)
    model = build_detector(config)
    load_detector_checkpoint(model, config.checkpoint)
    model.eval().to(device)

    parts = config.parts_dir
    _prepare_parts(parts, _fingerprint(config, annotations))
    todo = [(v, ts) for v, ts in keyframes.items() if not _part_path(parts, v).exists()]
    skipped = len(keyframes) - len(todo)
    if skipped:
        logger.info("%s: %d of %d videos already done, %d to go", parts, skipped, len(keyframes), len(todo))

    run = _Runner(model, device, config)
    failed: dict[str, str] = {}
    keyframes_run = 0
    stream = in_background(_decode(config.data, todo), maxsize=2 * config.batch_frames)
    total = sum(len(ts) for _, ts in todo)
    with progress(total=total, unit="keyframe", desc=f"detect {config.split}") as bar:
        batch: list[tuple[float, np.ndarray]] = []
        found: list[pd.DataFrame] = []
        done_in_video = 0
        for video, ts, frame, error in stream:
            if frame is not None:
                batch.append((ts, frame))
                done_in_video += 1
            if batch and (frame is None or len(batch) == config.batch_frames):
                found.extend(run(video, batch))
                keyframes_run += len(batch)
                bar.update(len(batch))
                batch = []
            if frame is not None:
                continue
            if error:  # the video's boxes are dropped: a rerun decodes it again from the start
                logger.warning("detect: video %s failed, listed in %s: %s", video, config.failures_path, error)
                failed[video] = error
                bar.update(len(keyframes[video]) - done_in_video)
            else:
                _atomic_write_boxes(_as_predicted(found), _part_path(parts, video))
            found, done_in_video = [], 0

    _write_failures(failed, config.failures_path)
    finished = [v for v in keyframes if v not in failed]
    result = _as_predicted([read_predicted_boxes(_part_path(parts, v)) for v in finished])
    _atomic_write_boxes(result, Path(config.out))
    if failed:
        logger.warning("detect: %d of %d videos failed; rerun to retry them", len(failed), len(keyframes))
    elif not config.keep_parts:
        shutil.rmtree(parts)
    logger.info("detect: %d boxes on %d videos written to %s", len(result), len(finished), config.out)
    return DetectSummary(
        out=Path(config.out),
        failures_csv=config.failures_path,
        videos=len(keyframes),
        videos_run=len(todo) - len(failed),
        videos_skipped=skipped,
        keyframes_run=keyframes_run,
        boxes=len(result),
        failed=failed,
    )


def _write_failures(failed: Mapping[str, str], path: Path) -> None:
    """Always written (with a header), so an empty file says "no failures" rather than a stale list."""
    frame = pd.DataFrame({"video_id": list(failed), "error": list(failed.values())}, dtype=str)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)
