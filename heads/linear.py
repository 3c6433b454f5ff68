"""The SlowFast detection baseline: the pooled actor vector, dropout, one linear layer (sigmoid in the loss).

The pooling half of the baseline (per-pathway temporal average, RoIAlign 7x7 at 1/16, spatial max, concat)
is done once by extraction and cached as ``roi_pooled``; this head is what remains of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cache_spec.views import ROI_POOLED
from heads.base import Head


class LinearHead(Head):
    """Dropout then a linear classifier over ``roi_pooled``; every actor is scored on its own."""

    views = (ROI_POOLED,)

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_channels, num_classes)

    @classmethod
    def from_dims(cls, dims: Mapping[str, int], num_classes: int, **options: Any) -> LinearHead:
        return cls(dims["C"], num_classes, **options)

    def forward(self, views: Mapping[str, torch.Tensor], box_clip: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(views[ROI_POOLED].float()))
