"""The long-term feature bank operator (Wu et al., CVPR 2019), and STO: the operator restricted to one clip.

Figure, left to right: short-term actor features S (``roi_pooled``) and long-term features L are each reduced
to the latent ``width`` (512) by a linear layer; the feature bank operator (FBO) is ``depth`` (2) modified
non-local blocks, each ``S <- S + Dropout(W_out(ReLU(LayerNorm(softmax(theta(S) phi(L)^T / sqrt(d)) g(L)))))``
with queries from S and keys/values from the unchanged L; the FBO output is concatenated with the original S
and classified.

STO ("short-term operator", LFB's own ablation) takes L to be the actors of the current clip, so each actor
attends to the actors it shares a clip with. :class:`FeatureBankOperator` takes any L with its padding mask,
so the bank version (L = bank entries in a window around the clip) is a different head over the same operator.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from cache_spec.views import ROI_POOLED
from heads._grouping import ClipGroups, masked_softmax
from heads._layers import Classifier
from heads.base import Head


class NonLocalBlock(nn.Module):
    """LFB's modified non-local block: scaled dot-product attention, LayerNorm, ReLU, linear, dropout, residual."""

    def __init__(self, width: int = 512, dropout: float = 0.2):
        super().__init__()
        self.width = width
        self.theta = nn.Linear(width, width)
        self.phi = nn.Linear(width, width)
        self.g = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, short: torch.Tensor, long: torch.Tensor, long_valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``short`` [G, Q, d], ``long`` [G, K, d], ``long_valid`` [G, K] -> (updated short, attention [G, Q, K])."""
        scores = self.theta(short) @ self.phi(long).transpose(1, 2) / self.width**0.5
        attention = masked_softmax(scores, long_valid[:, None, :])
        update = self.dropout(self.out(F.relu(self.norm(attention @ self.g(long)))))
        return short + update, attention


class FeatureBankOperator(nn.Module):
    """FBO-NL: stacked non-local blocks; the queries are updated layer by layer, the bank L is not."""

    def __init__(self, width: int = 512, depth: int = 2, dropout: float = 0.2):
        super().__init__()
        self.blocks = nn.ModuleList(NonLocalBlock(width, dropout) for _ in range(depth))

    def forward(
        self, short: torch.Tensor, long: torch.Tensor, long_valid: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        attentions = []
        for block in self.blocks:
            short, attention = block(short, long, long_valid)
            attentions.append(attention)
        return short, attentions


class ShortTermOperatorHead(Head):
    """STO: each actor attends (FBO-NL) to the actors of its own clip; [S, FBO(S, S)] is classified.

    ``last_attention``: ``fbo.{i}`` -> [n_boxes, max_actors] (the clip's actors in batch order, then padding).

    Args:
        in_channels: channels of ``roi_pooled``, the store's ``C`` (SlowFast R50: 2304).
        num_classes: number of action classes (80 for AVA).
        width: the latent width S and L are reduced to, and the non-local blocks' (LFB: 512).
        depth: non-local blocks in the FBO (LFB: 2).
        attn_dropout: dropout on each non-local block's update, before the residual (LFB: 0.2).
        dropout: the classifier's dropout before the linear layer (0.5, as the SlowFast baseline).
    """

    views = (ROI_POOLED,)

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 512,
        depth: int = 2,
        attn_dropout: float = 0.2,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.short_proj = nn.Linear(in_channels, width)
        self.long_proj = nn.Linear(in_channels, width)
        self.fbo = FeatureBankOperator(width, depth, attn_dropout)
        self.classifier = Classifier(in_channels + width, num_classes, dropout)
        self.last_attention: dict[str, torch.Tensor] = {}

    def forward(self, views: Mapping[str, torch.Tensor], box_clip: torch.Tensor) -> torch.Tensor:
        actor = views[ROI_POOLED].float()
        groups = ClipGroups.from_box_clip(box_clip)
        short = groups.pad(self.short_proj(actor))
        long = groups.pad(self.long_proj(actor))
        out, attentions = self.fbo(short, long, groups.valid)
        self.last_attention = {f"fbo.{i}": groups.unpad(a).detach() for i, a in enumerate(attentions)}
        return self.classifier(torch.cat([actor, groups.unpad(out)], dim=1))
