"""A trained head: its checkpoint, its loss, its predictions over a store, and the device it runs on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cache_spec.reader import ClipBatch, ClipBatchLoader
from cache_spec.store import Store
from heads import Head, build_head
from stages.data.ava import POSE, LabelMap
from stages.models.losses import ActionLoss


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


def action_loss(kind: str, label_map: LabelMap) -> ActionLoss:
    """The loss for ``kind`` with pose columns taken from the label map's categories."""
    return ActionLoss(kind, [i for i, c in enumerate(label_map.ids) if label_map.categories[c] == POSE])


def load_head(checkpoint: Path, device: torch.device | str = "cpu") -> tuple[Head, ActionLoss, list[int]]:
    """A trained head in eval mode, its loss (for scoring) and class ids; weights_only: nothing is executed."""
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    try:
        model = build_head(state["head"], state["dims"], len(state["class_ids"]), **state["options"])
    except TypeError as err:  # a head whose option names changed since the file was written
        raise ValueError(
            f"{checkpoint}: the {state['head']} head no longer takes the options it was saved with "
            f"({state['options']}): {err}; retrain it (dvc repro, or pipeline train-head)"
        ) from None
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
