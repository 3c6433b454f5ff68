"""What every head shares: the cache views it reads, and one forward signature over a batch of whole clips."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn


class Head(nn.Module):
    """A head maps the cache views of a batch of clips to per-box logits [n_boxes, num_classes].

    ``views`` holds box-row views ([n_boxes, ...]) and clip-row views ([n_clips, ...]); ``box_clip`` [n_boxes]
    says which clip of the batch each box belongs to, so relation heads can group a clip's actors.
    """

    views: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dims(cls, dims: Mapping[str, int], num_classes: int, **options: Any) -> Head:
        """Build the head sized for a store's dimensions (``C``, ``H``, ...), so it adapts to the backbone."""
        raise NotImplementedError

    def forward(self, views: Mapping[str, torch.Tensor], box_clip: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
