"""Action-classification losses and the matching score functions.

``bce``: per-class sigmoid BCE (every class independent). ``pose_softmax``: AVA's option: one softmax over the
pose classes (an actor has exactly one pose; actors with no pose label skip that term) plus sigmoid BCE for
the rest. Which classes are poses comes from the label map's categories, never from a hard-coded count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

LOSSES = ("bce", "pose_softmax")


class ActionLoss(nn.Module):
    """Loss over logits [n, K] and multi-hot targets [n, K]; ``scores`` turns logits into probabilities."""

    def __init__(self, kind: str, pose_columns: Sequence[int] = ()):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; choose one of {LOSSES}")
        if kind == "pose_softmax" and not pose_columns:
            raise ValueError("loss pose_softmax needs pose classes, but the label map has none")
        self.kind = kind
        self.pose: torch.Tensor
        self.register_buffer("pose", torch.tensor(sorted(pose_columns), dtype=torch.long), persistent=False)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
        mask[self.pose] = True
        return x[:, mask], x[:, ~mask]

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.kind == "bce":
            return F.binary_cross_entropy_with_logits(logits, targets)
        pose_logits, other_logits = self._split(logits)
        pose_targets, other_targets = self._split(targets)
        has_pose = pose_targets.sum(dim=1) > 0
        loss = logits.new_zeros(())
        if has_pose.any():
            loss = loss + F.cross_entropy(pose_logits[has_pose], pose_targets[has_pose].argmax(dim=1))
        if other_logits.shape[1]:
            loss = loss + F.binary_cross_entropy_with_logits(other_logits, other_targets)
        return loss

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        if self.kind == "bce":
            return torch.sigmoid(logits)
        out = torch.sigmoid(logits)
        out[:, self.pose] = torch.softmax(logits[:, self.pose], dim=1)
        return out
