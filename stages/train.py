"""Stage two: train a head from the cache alone (the backbone is never loaded), and score boxes with it."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cache_spec.reader import ClipBatch, ClipBatchLoader
from cache_spec.store import Store, open_store
from cache_spec.views import get_view
from heads import Head, build_head
from stages.ava_io import POSE, LabelMap, read_label_map
from stages.losses import ActionLoss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """One head-training run: which store, which head with which options, and the optimiser."""

    store: Path
    label_map: Path
    out_dir: Path
    head: str = "linear"
    head_options: Mapping[str, Any] = field(default_factory=lambda: {"dropout": 0.5})
    box_source: str = "gt"  # which boxes to train on: gt | det (detections labelled by IoU) | all
    loss: str = "bce"  # bce | pose_softmax (softmax over the label map's pose classes + sigmoid for the rest)
    epochs: int = 30
    batch_clips: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    memory_budget_mb: int = 2048


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def box_mask(store: Store, source: str) -> np.ndarray:
    """Boolean mask over the store's box rows for ``gt``, ``det`` or ``all``."""
    if source == "all":
        return np.ones(len(store.boxes), bool)
    if source not in ("gt", "det"):
        raise ValueError(f"box source must be gt, det or all, got {source!r}")
    return (store.boxes["source"] == source).to_numpy()


def multi_hot(labels: pd.Series, class_ids: Sequence[int]) -> np.ndarray:
    """[n_boxes, n_classes] float32 targets from the manifest's per-box label lists (unknown ids ignored)."""
    column = {c: i for i, c in enumerate(class_ids)}
    targets = np.zeros((len(labels), len(class_ids)), np.float32)
    for row, ids in enumerate(labels):
        for action in ids:
            if int(action) in column:
                targets[row, column[int(action)]] = 1.0
    return targets


def to_tensors(batch: ClipBatch, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    views = {name: torch.from_numpy(array).to(device, non_blocking=True) for name, array in batch.views.items()}
    return views, torch.from_numpy(batch.box_clip).to(device)


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
    missing = [v for v in model.views if v not in store.views and get_view(v).source == "store"]
    if missing:
        raise ValueError(
            f"head {config.head!r} reads view(s) {missing} that store {store.path} lacks (it holds "
            f"{', '.join(store.views)}). Add them with: pipeline extract --split <split> --heads {config.head}"
        )
    loader = ClipBatchLoader(
        store,
        model.views,
        batch_clips=config.batch_clips,
        seed=config.seed,
        box_mask=box_mask(store, config.box_source),
        memory_budget_bytes=config.memory_budget_mb << 20,
    )
    if loader.num_boxes == 0:
        raise ValueError(f"store {store.path} has no {config.box_source!r} boxes to train on")
    targets = torch.from_numpy(multi_hot(store.boxes["labels"], class_ids))
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


def action_loss(kind: str, label_map: LabelMap) -> ActionLoss:
    """The loss for ``kind`` with pose columns taken from the label map's categories."""
    return ActionLoss(kind, [i for i, c in enumerate(label_map.ids) if label_map.categories[c] == POSE])


def load_head(checkpoint: Path, device: torch.device | str = "cpu") -> tuple[Head, ActionLoss, list[int]]:
    """A trained head in eval mode, its loss (for scoring) and class ids; weights_only: nothing is executed."""
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    model = build_head(state["head"], state["dims"], len(state["class_ids"]), **state["options"])
    model.load_state_dict(state["state_dict"])
    loss = ActionLoss(state.get("loss", "bce"), state.get("pose_columns", [])).to(device)
    return model.to(device).eval(), loss, [int(c) for c in state["class_ids"]]


@torch.inference_mode()
def predict(
    model: Head,
    loss: ActionLoss,
    store: Store,
    source: str = "det",
    batch_clips: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Class scores [n_boxes, n_classes] for the store's ``source`` boxes, with their box rows (sorted)."""
    loader = ClipBatchLoader(
        store, model.views, batch_clips=batch_clips, shuffle=False, box_mask=box_mask(store, source)
    )
    rows, scores = [], []
    for batch in loader:
        views, box_clip = to_tensors(batch, torch.device(device))
        scores.append(loss.scores(model(views, box_clip)).float().cpu().numpy())
        rows.append(batch.box_index)
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return np.concatenate(rows), np.concatenate(scores)
