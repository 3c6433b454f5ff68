"""End-to-end fine-tuning of the backbone with the linear RoI head: the "SlowFast detection" baseline.

A randomly initialised backbone gives features a linear head can hardly use, and no pretrained weights can be
downloaded here, so ``dvc repro`` fine-tunes a small SlowFast on the synthetic train split first; ``extract``
then loads the checkpoint this writes. On real data the same stage fine-tunes from an imported checkpoint.
Clips are decoded once and kept in memory (float16) for all epochs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from stages.data.ava import read_label_map
from stages.data.layout import DataLayout
from stages.data.manifest import ManifestSpec, build_manifest
from stages.data.video import ClipSampling, ClipsFailedError, decode_clips, in_background
from stages.models.backbones import BackboneConfig, VideoBackbone, backbone_checkpoint, load_backbone, pool_context
from stages.models.slowfast import roi_pool_features
from stages.models.trained_head import multi_hot, resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    data: DataLayout
    out: Path  # the checkpoint extract loads (PySlowFast layout: backbone state dict under "model_state")
    split: str = "train"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # where training starts (its checkpoint)
    sampling: ClipSampling = field(default_factory=ClipSampling)
    epochs: int = 10
    batch_clips: int = 8
    lr: float = 0.002
    weight_decay: float = 0.0001
    dropout: float = 0.5
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    allow_missing: bool = False  # train on the clips that decode when some cannot (listed) instead of failing


class RoIDetector(nn.Module):
    """Backbone + the linear RoI head, trained together (PySlowFast's AVA detection model)."""

    def __init__(self, backbone: VideoBackbone, num_classes: int, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(sum(backbone.pathway_channels), num_classes)

    def forward(self, clips: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        context = pool_context(self.backbone(clips))
        pooled = roi_pool_features(context, rois[:, 1:], rois[:, 0], spatial_scale=1.0)  # rois in map cells
        return self.classifier(self.dropout(pooled))


def finetune(config: FinetuneConfig, progress: Callable[..., Any] = tqdm) -> dict[str, float]:
    """Train backbone + linear head on the split's ground-truth boxes; save the backbone's weights."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    class_ids = read_label_map(config.data.label_map_path()).ids
    spec = ManifestSpec(layout=config.data, split=config.split, box_sources=("gt",))
    clips, boxes = build_manifest(spec, config.sampling, config.backbone.stride, allow_missing=config.allow_missing)
    decoded = {}
    failed: dict[int, str] = {}
    for index, tensor, error in progress(
        in_background(decode_clips(clips, config.data.video, config.sampling), maxsize=16),
        total=len(clips),
        desc="decode clips",
        unit="clip",
    ):
        if tensor is None:
            failed[index] = error
        else:
            decoded[index] = tensor.half()
    if failed:
        first = "; ".join(list(dict.fromkeys(failed.values()))[:3])
        what = f"{len(failed)} of {len(clips)} clips could not be decoded (first: {first})"
        if not config.allow_missing:
            raise ClipsFailedError(f"{what}; fix the videos, or train on the rest with --allow-missing")
        log.warning("%s; fine-tuning on the other %d (allow_missing)", what, len(decoded))
    usable = np.array(sorted(decoded))
    targets = torch.from_numpy(multi_hot(boxes["labels"], class_ids))
    map_boxes = torch.from_numpy(boxes[["fx1", "fy1", "fx2", "fy2"]].to_numpy(np.float32))
    box_start, box_count = clips["box_start"].to_numpy(), clips["box_count"].to_numpy()

    backbone, _ = load_backbone(config.backbone)
    model = RoIDetector(backbone, len(class_ids), config.dropout).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(usable) // config.batch_clips)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    curve, start = [], time.perf_counter()
    for epoch in progress(range(config.epochs), desc="finetune", unit="epoch"):
        total, n = 0.0, 0
        order = generator.permutation(usable)
        for lo in range(0, len(order), config.batch_clips):
            batch = order[lo : lo + config.batch_clips]
            rows = np.concatenate([np.arange(box_start[c], box_start[c] + box_count[c]) for c in batch])
            owner = torch.from_numpy(np.repeat(np.arange(len(batch)), box_count[batch]).astype(np.float32))
            rois = torch.cat([owner[:, None], map_boxes[rows]], dim=1).to(device)
            inputs = torch.stack([decoded[c] for c in batch]).to(device).float()
            loss = loss_fn(model(inputs, rois), targets[rows].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total, n = total + loss.item() * len(rows), n + len(rows)
        curve.append({"epoch": epoch + 1, "loss": total / n})
        log.info("finetune epoch %d: loss %.4f", epoch + 1, total / n)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**backbone_checkpoint(model.backbone), "class_ids": list(class_ids)}, config.out)
    metrics = {
        "final_loss": curve[-1]["loss"],
        "epochs": config.epochs,
        "clips": int(len(usable)),
        "seconds": time.perf_counter() - start,
    }
    out_dir = config.out.parent
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "curve.tsv").write_text("epoch\tloss\n" + "".join(f"{c['epoch']}\t{c['loss']:.6f}\n" for c in curve))
    return metrics
