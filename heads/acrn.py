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

import torch
import torch.nn.functional as F
from torch import nn

from cache_spec.views import CLIP_EXTENT, CONTEXT_MAP, ROI_POOLED
from heads._extent import clip_extent, extent_mask, masked_mean
from heads._layers import Classifier, actor_context_conv
from heads.base import Head


class ACRNHead(Head):
    """Actor-context relations by convolution over the tiled actor + context map, then pooled and classified.

    Args:
        in_channels: channels of ``roi_pooled`` and ``context_map``, the store's ``C`` (SlowFast R50: 2304).
        num_classes: number of action classes (80 for AVA).
        width: channels of the relation map, out of both convolutions (512, ACAR-Net's first-order width).
        dropout: the classifier's dropout before the linear layer (0.5, as the SlowFast baseline).
    """

    views = (ROI_POOLED, CONTEXT_MAP, CLIP_EXTENT)

    def __init__(self, in_channels: int, num_classes: int, width: int = 512, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(2 * in_channels, width, 1)  # relation at each position: [context, actor]
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)  # aggregate neighbouring relations
        self.classifier = Classifier(in_channels + width, num_classes, dropout)

    def forward(self, views: Mapping[str, torch.Tensor], box_clip: torch.Tensor) -> torch.Tensor:
        actor = views[ROI_POOLED].float()
        context = views[CONTEXT_MAP].float()
        box_clip = box_clip.long()
        extent = clip_extent(views, len(context), *context.shape[-2:]).to(context.device)
        mask = extent_mask(extent[box_clip], *context.shape[-2:])[:, None].to(context.dtype)  # [n, 1, H, W]
        relation = F.relu(actor_context_conv(self.conv1, context, actor, box_clip)) * mask
        relation = masked_mean(F.relu(self.conv2(relation)), mask)
        return self.classifier(torch.cat([actor, relation], dim=1))
