"""ACRN, the Actor-Centric Relation Network (Sun et al., ECCV 2018), as adapted by ACAR-Net's ablation.

Figure, left to right: the actor vector is tiled over every position of its clip's context map and
concatenated with it; a 1x1 convolution encodes the actor-context relation at each position; a 3x3
convolution aggregates neighbouring relations; average pooling over the map gives one relation vector,
classified together with the actor vector. Every context position gets the same weight (no attention).

Padding: like ACAR-Net's reference, the head works on each clip's map cropped to its valid extent
(``clip_extent``): the relation map is zeroed beyond it, so the 3x3 convolution meets the zeros of its own
padding at the crop border, and the average runs over the valid cells only. The batch stays padded (one pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cache_spec.views import CLIP_EXTENT, CONTEXT_MAP, ROI_POOLED
from heads._extent import clip_extent, extent_mask, masked_mean
from heads.base import Head


def actor_context_conv(
    conv: nn.Conv2d, context: torch.Tensor, actor: torch.Tensor, box_clip: torch.Tensor
) -> torch.Tensor:
    """``conv(cat([context[box_clip], actor tiled over H x W], dim=1))`` for a 1x1 ``conv``, without the tiling.

    A 1x1 convolution is linear in its input channels, so it splits into a context half applied once per clip
    and an actor half applied once per box (a matrix product, the same at every position); their broadcast
    sum is exactly the convolution of the concatenation. The concatenation order (context first, then actor)
    is ACAR-Net's, so ``conv.weight`` loads from its checkpoints unchanged.

    ``context`` [n_clips, C_x, H, W], ``actor`` [n_boxes, C_a], ``conv`` 1x1 over C_x + C_a channels ->
    [n_boxes, out, H, W].
    """
    if conv.kernel_size != (1, 1) or conv.in_channels != context.shape[1] + actor.shape[1]:
        raise ValueError(
            f"need a 1x1 conv over {context.shape[1]} + {actor.shape[1]} channels, got {conv.kernel_size} "
            f"over {conv.in_channels}"
        )
    weight = conv.weight[:, :, 0, 0]
    split = context.shape[1]
    context_term = F.conv2d(context, weight[:, :split, None, None], conv.bias)
    actor_term = actor @ weight[:, split:].T
    return context_term[box_clip] + actor_term[:, :, None, None]


class ACRNHead(Head):
    """Actor-context relations by convolution over the tiled actor + context map, then pooled and classified."""

    views = (ROI_POOLED, CONTEXT_MAP, CLIP_EXTENT)

    def __init__(self, in_channels: int, num_classes: int, hidden_dim: int = 512, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(2 * in_channels, hidden_dim, 1)  # relation at each position: [context, actor]
        self.conv2 = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1)  # aggregate neighbouring relations
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_channels + hidden_dim, num_classes)

    @classmethod
    def from_dims(cls, dims: Mapping[str, int], num_classes: int, **options: Any) -> ACRNHead:
        return cls(dims["C"], num_classes, **options)

    def forward(self, views: Mapping[str, torch.Tensor], box_clip: torch.Tensor) -> torch.Tensor:
        actor = views[ROI_POOLED].float()
        context = views[CONTEXT_MAP].float()
        box_clip = box_clip.long()
        extent = clip_extent(views, len(context), *context.shape[-2:]).to(context.device)
        mask = extent_mask(extent[box_clip], *context.shape[-2:])[:, None].to(context.dtype)  # [n, 1, H, W]
        relation = F.relu(actor_context_conv(self.conv1, context, actor, box_clip)) * mask
        relation = masked_mean(F.relu(self.conv2(relation)), mask)
        return self.classifier(self.dropout(torch.cat([actor, relation], dim=1)))
