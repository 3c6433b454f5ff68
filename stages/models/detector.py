"""The person detector: torchvision's Faster R-CNN R50-FPN v2 from a user checkpoint, its output as AVA boxes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn_v2
from torchvision.ops import clip_boxes_to_image, nms

from stages.data.ava import BOX_COLUMNS
from stages.metrics import boxes as boxes_np
from stages.models.checkpoints import CheckpointError, listing, read_checkpoint, tensor_state_dict

logger = logging.getLogger(__name__)


class DetectorSettings(Protocol):
    """The settings that shape the detector (``stages.detect.DetectConfig`` has them all)."""

    # read-only properties, so that frozen dataclasses satisfy the protocol
    @property
    def num_classes(self) -> int: ...
    @property
    def min_size(self) -> int: ...
    @property
    def max_size(self) -> int: ...
    @property
    def score_threshold(self) -> float: ...
    @property
    def nms_iou(self) -> float: ...
    @property
    def max_detections(self) -> int: ...
    @property
    def rpn_pre_nms_top_n(self) -> int: ...
    @property
    def rpn_post_nms_top_n(self) -> int: ...


ARCHITECTURE = "fasterrcnn_resnet50_fpn_v2"


_SHOWN_KEYS = 5  # how many keys an architecture error lists before "... and N more"


_OPTIONAL_KEYS = ("num_batches_tracked",)  # BatchNorm counters: unused at inference, absent from some saves


def build_detector(config: DetectorSettings) -> FasterRCNN:
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

    Read with ``torch.load(weights_only=True)`` (``stages.models.checkpoints.read_checkpoint``), never plain pickle.
    Missing/unexpected keys and shape mismatches are listed (a few each, with counts) plus a hint when the
    checkpoint is recognisably something else (wrong class count, v1, MobileNet, a classifier).
    """
    path = Path(path)
    sd = tensor_state_dict(read_checkpoint(path), path)
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
            f"{len(keys)} {what}: {listing(keys, _SHOWN_KEYS)}"
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
    pixels, score = b[order].cpu().double().numpy(), s[order].cpu().double().numpy()
    norm = boxes_np.clip(np.round(pixels / np.array([width, height, width, height], dtype=np.float64), 3))
    ok = (norm[:, 2] > norm[:, 0]) & (norm[:, 3] > norm[:, 1])
    out = pd.DataFrame(norm[ok], columns=BOX_COLUMNS)
    out["score"] = score[ok]
    return out
