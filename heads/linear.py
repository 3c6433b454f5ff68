"""The SlowFast detection baseline: the pooled actor vector, dropout, one linear layer (sigmoid in the loss).

The pooling half of the baseline (per-pathway temporal average, RoIAlign 7x7 at 1/16, spatial max, concat)
is done once by extraction and cached as ``roi_pooled``; this head is what remains of it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cache_spec.views import ROI_POOLED
from heads._layers import Classifier
from heads.base import Head


class LinearHead(Head):
    """Dropout then a linear classifier over ``roi_pooled``; every actor is scored on its own.

    Args:
        in_channels: channels of ``roi_pooled``, the store's ``C`` (SlowFast R50: 2304, both pathways).
        num_classes: number of action classes (80 for AVA).
        dropout: the classifier's dropout before the linear layer (SlowFast: 0.5).
    """

    views = (ROI_POOLED,)

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.classifier = Classifier(in_channels, num_classes, dropout)

    def forward(self, views: Mapping[str, torch.Tensor], box_clip: torch.Tensor) -> torch.Tensor:
        return self.classifier(views[ROI_POOLED].float())
