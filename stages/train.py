"""Stage two: train a head from the cache alone (the backbone is never loaded), and score boxes with it."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cache_spec.reader import ClipBatchLoader
from cache_spec.store import open_store
from heads import build_head
from stages.data.ava import POSE, read_label_map
from stages.models.trained_head import action_loss, box_mask, multi_hot, require_views, resolve_device, to_tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """One head-training run: which store, which head with which options, and the optimiser."""

    store: Path
    label_map: Path
    out_dir: Path
    head: str = "linear"
    head_options: Mapping[str, Any] = field(default_factory=dict)  # the head constructor's defaults
    box_source: Literal["gt", "det", "all"] = "gt"  # det: detections labelled by IoU
    loss: Literal["bce", "pose_softmax"] = "bce"  # pose_softmax: softmax over pose classes, sigmoid for the rest
    epochs: int = 30
    batch_clips: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    memory_budget_mb: int = 2048


@dataclass
class TrainResult:
    checkpoint: Path
    final_loss: float
    boxes_per_second: float
    seconds: float


def train(config: TrainConfig, progress: Callable[..., Any] = tqdm) -> TrainResult:
    """Train ``config.head`` on one store; writes ``head.pt``, ``metrics.json`` and ``curve.tsv``."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    store = open_store(config.store)
    label_map = read_label_map(config.label_map)
    class_ids = label_map.ids
    model = build_head(config.head, store.dims, len(class_ids), **dict(config.head_options)).to(device)
    require_views(config.head, model.views, store)
    trained = box_mask(store, config.box_source)
    loader = ClipBatchLoader(
        store,
        model.views,
        batch_clips=config.batch_clips,
        seed=config.seed,
        box_mask=trained,
        memory_budget_bytes=config.memory_budget_mb << 20,
    )
    if loader.num_boxes == 0:
        raise ValueError(f"store {store.path} has no {config.box_source!r} boxes to train on")
    # labels outside the label map are skipped with one warning (counted over the boxes trained on), as evaluate
    # skips them in the ground truth
    targets_np = np.zeros((len(store.boxes), len(class_ids)), np.float32)
    source = f"store {store.path} ({config.box_source} boxes)"
    targets_np[trained] = multi_hot(store.boxes["labels"][trained], class_ids, source, str(config.label_map))
    targets = torch.from_numpy(targets_np)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs * len(loader))
    loss_fn = action_loss(config.loss, label_map).to(device)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    curve = []
    start = time.perf_counter()
    model.train()
    for epoch in progress(range(config.epochs), desc=f"train {config.head}", unit="epoch"):
        total, n = 0.0, 0
        for batch in loader:
            views, box_clip = to_tensors(batch, device)
            logits = model(views, box_clip)
            loss = loss_fn(logits, targets[batch.box_index].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * batch.num_boxes
            n += batch.num_boxes
        curve.append({"epoch": epoch + 1, "loss": total / n, "lr": schedule.get_last_lr()[0]})
        log.debug("epoch %d loss %.4f", epoch + 1, total / n)
    seconds = time.perf_counter() - start
    checkpoint = config.out_dir / "head.pt"
    torch.save(
        {
            "head": config.head,
            "options": dict(config.head_options),
            "dims": dict(store.dims),
            "class_ids": list(class_ids),
            "loss": config.loss,
            "pose_columns": [i for i, c in enumerate(class_ids) if label_map.categories[c] == POSE],
            # evaluate refuses a store whose backbone, weights or clip sampling differ from these
            "store_fingerprint": json.dumps(store.fingerprint, sort_keys=True, default=str),
            "state_dict": model.state_dict(),
        },
        checkpoint,
    )
    pd.DataFrame(curve).to_csv(config.out_dir / "curve.tsv", sep="\t", index=False)
    result = TrainResult(checkpoint, curve[-1]["loss"], loader.num_boxes * config.epochs / seconds, seconds)
    metrics = {
        "final_loss": result.final_loss,
        "epochs": config.epochs,
        "train_boxes": loader.num_boxes,
        "boxes_per_second": result.boxes_per_second,
        "seconds": seconds,
    }
    (config.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return result
