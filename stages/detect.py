"""Person detection on AVA keyframes with torchvision's Faster R-CNN ResNet-50 FPN v2, and its person AP/AR.

AVA's own pipeline feeds the action head with boxes from a COCO person detector run on every keyframe; this stage
does the same from a user checkpoint (nothing is downloaded) and writes the AVA predicted-box CSV that
``stages.extract`` reads. Which keyframes: the distinct (video, timestamp) pairs of the split's annotation file,
i.e. the keyframes that evaluation and training look at. Excluded keyframes are not in that file (AVA removes
them) and every downstream reader drops them anyway, so detecting on them would be wasted work.

The frame of keyframe ``t`` is ``round((t - time_offset_s) * fps)``, as in ``stages.video``. Each video is decoded
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
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn_v2
from torchvision.ops import clip_boxes_to_image, nms
from tqdm import tqdm

from stages.ava_eval import voc_average_precision
from stages.ava_io import (
    BOX_COLUMNS,
    PREDICTED_BOX_COLUMNS,
    read_annotations,
    read_predicted_boxes,
    write_predicted_boxes,
)
from stages.checkpoints import CheckpointError, read_checkpoint
from stages.extract import in_background
from stages.video import ClipSampling, VideoDecodeError, iter_keyframe_clips

logger = logging.getLogger(__name__)

ARCHITECTURE = "fasterrcnn_resnet50_fpn_v2"
_FINGERPRINT_FILE = "fingerprint.json"
_SHOWN_KEYS = 5  # how many keys an architecture error lists before "and N more"
# One frame per keyframe: the keyframe itself (window 1, so the clip starts and ends at the keyframe's index).
_KEYFRAME_ONLY = ClipSampling(num_frames=1, frame_stride=1, alpha=1)
_OPTIONAL_KEYS = ("num_batches_tracked",)  # BatchNorm counters: unused at inference, absent from some saves


@dataclass(frozen=True)
class DetectConfig:
    """What decides the boxes (all of it enters the resume fingerprint) plus how to run."""

    data_dir: Path
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
    time_offset_s: float = 0.0  # timestamp of the video file's first frame (900 for AVA's trimmed 15-min cuts)
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


# ----------------------------------------------------------------------------------------------- the detector


def build_detector(config: DetectConfig) -> FasterRCNN:
    """The v2 architecture with this config's transform and post-processing, randomly initialised.

    The model's own score threshold is set just under ``score_threshold`` (in float32, which the model compares
    in): filtering before NMS gives the same boxes as filtering after, since a box can only be suppressed by a
    higher-scoring one, and it spares NMS the low-scoring boxes.
    """
    pre_threshold = float(np.nextafter(np.float32(config.score_threshold), np.float32(-1.0)))
    return fasterrcnn_resnet50_fpn_v2(
        weights=None,
        weights_backbone=None,
        num_classes=config.num_classes,
        min_size=config.min_size,
        max_size=config.max_size,
        box_score_thresh=pre_threshold,
        box_nms_thresh=config.nms_iou,
        box_detections_per_img=config.max_detections,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n,
    )


def _unwrap_state_dict(contents: Any, path: Path) -> dict[str, torch.Tensor]:
    """Accept a plain state dict, {"model": sd} or {"state_dict": sd}; strip a DataParallel ``module.`` prefix."""
    if isinstance(contents, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(contents.get(key), Mapping):
                contents = contents[key]
                break
    if not isinstance(contents, Mapping) or not contents:
        raise CheckpointError(
            f"{path}: expected a state dict (or {{'model': sd}} / {{'state_dict': sd}}), got {type(contents).__name__}"
        )
    not_tensors = [str(k) for k, v in contents.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors: {_listing(not_tensors)}")
    sd = {str(k): v for k, v in contents.items()}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN_KEYS])
    return shown + (f" and {len(items) - _SHOWN_KEYS} more" if len(items) > _SHOWN_KEYS else "")


def _architecture_hints(sd: Mapping[str, torch.Tensor], num_classes: int) -> list[str]:
    """Guesses at what the checkpoint is, so the error says what to change rather than only what differs."""
    hints = []
    cls = sd.get("roi_heads.box_predictor.cls_score.weight")
    if cls is not None and cls.ndim == 2 and cls.shape[0] != num_classes:
        hints.append(f"its box predictor has {cls.shape[0]} classes: set num_classes={cls.shape[0]}")
    detector = any(k.startswith(("rpn.", "roi_heads.")) for k in sd)
    if not detector:
        hints.append("it has no RPN / RoI-head weights, so it is not a Faster R-CNN detector (a classifier?)")
    elif "backbone.body.conv1.weight" not in sd:
        hints.append("its backbone is not a ResNet (fasterrcnn_mobilenet_v3_*?); this stage needs ResNet-50")
    elif "roi_heads.box_head.fc6.weight" in sd:
        hints.append("it looks like fasterrcnn_resnet50_fpn (v1) weights; this stage runs the v2 architecture")
    return hints


def load_detector_checkpoint(model: FasterRCNN, path: Path | str) -> None:
    """Load ``path`` into ``model`` strictly, refusing a different architecture with a short, specific message.

    Read with ``torch.load(weights_only=True)`` (``stages.checkpoints.read_checkpoint``), never plain pickle.
    Missing/unexpected keys and shape mismatches are listed (a few each, with counts) plus a hint when the
    checkpoint is recognisably something else (wrong class count, v1, MobileNet, a classifier).
    """
    path = Path(path)
    sd = _unwrap_state_dict(read_checkpoint(path), path)
    own = model.state_dict()
    missing = sorted(k for k in own.keys() - sd.keys() if k.rsplit(".", 1)[-1] not in _OPTIONAL_KEYS)
    unexpected = sorted(sd.keys() - own.keys())
    mismatched = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & sd.keys()
        if tuple(sd[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        num_classes = model.roi_heads.box_predictor.cls_score.out_features
        problems = [
            f"{len(keys)} {what}: {_listing(keys)}"
            for what, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if keys
        ]
        hints = _architecture_hints(sd, num_classes)
        raise CheckpointError(
            f"{path}: does not fit {ARCHITECTURE} with num_classes={num_classes}: "
            + "; ".join(problems)
            + ("" if not hints else ". Hint: " + "; ".join(hints))
        )
    # Adopting the checkpoint's tensors instead of copying them halves peak memory and load time; a checkpoint
    # in another dtype (fp16 saves) is copied, which casts it to the model's dtype.
    same_dtype = all(sd[k].dtype == v.dtype for k, v in own.items() if k in sd)
    model.load_state_dict(sd, strict=False, assign=same_dtype)  # only optional counters can be absent here
    logger.info("%s: loaded %d tensors into %s", path, len(sd), ARCHITECTURE)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------------------------- post-processing


def person_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    image_hw: tuple[int, int],
    *,
    person_label: int = 1,
    score_threshold: float = 0.5,
    nms_iou: float = 0.5,
) -> pd.DataFrame:
    """One image's detector output -> person boxes as AVA writes them, best first.

    ``boxes`` are ``[N, 4]`` pixel corners ``(x1, y1, x2, y2)`` of an image of ``image_hw = (height, width)``,
    as torchvision detectors return them. Keeps ``labels == person_label`` and ``scores >= score_threshold``,
    clips to the image, applies NMS at ``nms_iou`` (a no-op on output that had the same class-wise NMS),
    and normalises by width/height. Coordinates are rounded to the CSV's 3 decimals and boxes that collapse at
    that precision are dropped, so the written file always passes ``read_predicted_boxes``' x2 > x1 check.
    Returns columns x1, y1, x2, y2 (in [0, 1]) and score, sorted by descending score.
    """
    height, width = image_hw
    keep = (labels == person_label) & (scores >= score_threshold)
    b = clip_boxes_to_image(boxes[keep].float(), (height, width))
    s = scores[keep].float()
    real = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b, s = b[real], s[real]
    order = nms(b, s, nms_iou)  # indices by decreasing score
    b, s = b[order].cpu().double().numpy(), s[order].cpu().double().numpy()
    norm = np.round(b / np.array([width, height, width, height], dtype=np.float64), 3)
    norm = np.clip(norm, 0.0, 1.0)
    ok = (norm[:, 2] > norm[:, 0]) & (norm[:, 3] > norm[:, 1])
    out = pd.DataFrame(norm[ok], columns=BOX_COLUMNS)
    out["score"] = s[ok]
    return out


# ----------------------------------------------------------------------------------------------- the run


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
                "time_offset_s",
            )
        },
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
    return parts / f"{video}.csv"


def _keyframes(annotations: Path) -> dict[str, list[int]]:
    """Video id -> sorted distinct keyframe timestamps of the split's annotations."""
    gt = read_annotations(annotations)
    pairs = gt[["video_id", "timestamp"]].drop_duplicates().sort_values(["video_id", "timestamp"])
    return {str(v): g["timestamp"].astype(int).tolist() for v, g in pairs.groupby("video_id", sort=True)}


def _decode(video_dir: Path, todo: Sequence[tuple[str, list[int]]], offset: float) -> Iterator[tuple]:
    """``(video, timestamp, frame, error)`` per keyframe, then ``(video, None, None, error)`` to end each video."""
    for video, timestamps in todo:
        error = ""
        try:
            for ts, frames in iter_keyframe_clips(
                video_dir / f"{video}.mp4", [float(t) for t in timestamps], _KEYFRAME_ONLY, offset
            ):
                yield video, int(round(ts)), frames[0], ""
        except VideoDecodeError as err:
            error = str(err)
        yield video, None, None, error


class _Runner:
    """Runs the detector on batches of keyframes of one video and collects its person boxes."""

    def __init__(self, model: FasterRCNN, device: torch.device, config: DetectConfig) -> None:
        self.model, self.device, self.config = model, device, config

    @torch.inference_mode()
    def __call__(self, video: str, batch: list[tuple[int, np.ndarray]]) -> list[pd.DataFrame]:
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
    data = Path(config.data_dir)
    annotations = data / "annotations" / f"{config.split}.csv"
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
    stream = in_background(_decode(data / "videos", todo, config.time_offset_s), maxsize=2 * config.batch_frames)
    total = sum(len(ts) for _, ts in todo)
    with progress(total=total, unit="keyframe", desc=f"detect {config.split}") as bar:
        batch: list[tuple[int, np.ndarray]] = []
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


# ----------------------------------------------------------------------------------------------- person AP / AR


def _keyframe_codes(frames: Sequence[pd.DataFrame]) -> list[np.ndarray]:
    """One integer per (video_id, timestamp), shared across the frames (timestamps compared to the microsecond)."""
    keys = []
    for f in frames:
        micros = np.rint(pd.to_numeric(f["timestamp"]).to_numpy(dtype=np.float64) * 1e6).astype(np.int64)
        keys.append(f["video_id"].astype(str).to_numpy(dtype=object) + "@" + micros.astype(str).astype(object))
    codes, _ = pd.factorize(np.concatenate(keys) if keys else np.array([], dtype=object))
    bounds = np.cumsum([0] + [len(f) for f in frames])
    return [codes[bounds[i] : bounds[i + 1]].astype(np.int64) for i in range(len(frames))]


def _best_gt(
    det_key: np.ndarray, det_box: np.ndarray, gt_key: np.ndarray, gt_box: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per detection, its highest-IoU GT box in the same keyframe (first on ties) and that IoU; -1 / 0 if none.

    ``gt_key`` must be sorted. All (detection, same-keyframe GT) pairs are formed at once.
    """
    lo = np.searchsorted(gt_key, det_key, side="left")
    n_gt = np.searchsorted(gt_key, det_key, side="right") - lo
    best = np.full(len(det_key), -1, dtype=np.int64)
    best_iou = np.zeros(len(det_key), dtype=np.float64)
    has = np.flatnonzero(n_gt > 0)
    if has.size == 0:
        return best, best_iou
    counts = n_gt[has]
    pair_det = np.repeat(has, counts)
    seg = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pair_gt = lo[pair_det] + np.arange(len(pair_det)) - np.repeat(seg, counts)
    d, g = det_box[pair_det], gt_box[pair_gt]
    iw = np.clip(np.minimum(d[:, 2], g[:, 2]) - np.maximum(d[:, 0], g[:, 0]), 0.0, None)
    ih = np.clip(np.minimum(d[:, 3], g[:, 3]) - np.maximum(d[:, 1], g[:, 1]), 0.0, None)
    inter = iw * ih
    union = (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1]) + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    seg_max = np.maximum.reduceat(iou, seg)
    hit = np.flatnonzero(iou == np.repeat(seg_max, counts))
    first = hit[np.append(True, pair_det[hit][1:] != pair_det[hit][:-1])]
    best[has], best_iou[has] = pair_gt[first], seg_max
    return best, best_iou


def evaluate_detections(
    predicted: pd.DataFrame,
    groundtruth: pd.DataFrame,
    iou: float = 0.5,
    max_dets: int = 100,
    excluded: pd.DataFrame | None = None,
) -> dict[str, float]:
    """Class-agnostic person AP (VOC all-point) at ``iou`` and recall with at most ``max_dets`` boxes per keyframe.

    Ground truth: every distinct box of a keyframe is one actor (AVA repeats an actor's box once per action).
    Only keyframes present in the ground truth are evaluated (detections elsewhere are ignored); ``excluded``
    keyframes are dropped on both sides. Per keyframe the top ``max_dets`` detections by score are kept (for AP
    and recall alike; ``max_dets <= 0`` keeps all). Matching, VOC/AVA style: in descending score order each
    detection takes its highest-IoU actor (no +1 in areas); it is a true positive iff that IoU >= ``iou`` and no
    higher-scored detection took the actor already (no fallback to the second-best actor), so a duplicate is a
    false positive. Ties in score keep input order. Returns ``person_ap`` and ``person_ar`` (nan without ground
    truth) with the counts behind them.
    """
    need = ["video_id", "timestamp", *BOX_COLUMNS]
    for name, frame, cols in (("predicted", predicted, [*need, "score"]), ("groundtruth", groundtruth, need)):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} lacks columns {missing}")
    if excluded is None:
        excluded = pd.DataFrame({"video_id": pd.Series([], dtype=str), "timestamp": pd.Series([], dtype=np.int64)})
    g_key, d_key, x_key = _keyframe_codes([groundtruth, predicted, excluded])
    n_keys = int(max((k.max() + 1 for k in (g_key, d_key, x_key) if k.size), default=0))
    is_excluded = np.zeros(n_keys, dtype=bool)
    is_excluded[x_key] = True
    annotated = np.zeros(n_keys, dtype=bool)
    annotated[g_key[~is_excluded[g_key]]] = True

    g_box_all = groundtruth[BOX_COLUMNS].to_numpy(dtype=np.float64)
    gt = pd.DataFrame(g_box_all, columns=BOX_COLUMNS).assign(key=g_key)[annotated[g_key]].drop_duplicates()
    gt = gt.sort_values("key", kind="stable")
    gt_key, gt_box = gt["key"].to_numpy(np.int64), gt[BOX_COLUMNS].to_numpy(np.float64)

    score_all = pd.to_numeric(predicted["score"]).to_numpy(dtype=np.float64)
    rows = np.flatnonzero(annotated[d_key])
    rows = rows[np.lexsort((rows, -score_all[rows], d_key[rows]))]  # keyframe, then score (desc), then input
    key, score = d_key[rows], score_all[rows]
    box = predicted[BOX_COLUMNS].to_numpy(dtype=np.float64)[rows]
    if np.isnan(score).any() or np.isnan(box).any() or np.isnan(gt_box).any():
        raise ValueError("boxes or scores contain NaN")
    new_key = np.append(True, key[1:] != key[:-1]) if key.size else np.array([], dtype=bool)
    starts = np.flatnonzero(new_key)
    rank = np.arange(len(key)) - np.repeat(starts, np.diff(np.append(starts, len(key))))
    if max_dets > 0:
        capped = rank < max_dets
        key, score, box = key[capped], score[capped], box[capped]

    best, best_iou = _best_gt(key, box, gt_key, gt_box)
    candidates = np.flatnonzero((best >= 0) & (best_iou >= iou))
    _, first_claim = np.unique(best[candidates], return_index=True)  # rows are in score order per keyframe
    tp = np.zeros(len(key), dtype=bool)
    tp[candidates[first_claim]] = True

    num_gt = len(gt_key)
    order = np.argsort(-score, kind="stable")
    cum_tp = np.cumsum(tp[order])
    if num_gt:
        precision = cum_tp / np.arange(1, len(order) + 1)
        ap = voc_average_precision(precision, cum_tp / num_gt)
        ar = float(tp.sum()) / num_gt
    else:
        ap = ar = float("nan")
    return {
        "person_ap": ap,
        "person_ar": ar,
        "num_gt": num_gt,
        "num_detections": len(key),
        "true_positives": int(tp.sum()),
        "keyframes": int(annotated.sum()),
        "iou": float(iou),
        "max_dets": int(max_dets),
    }
