"""S-only and T-only person relation heads (Feng et al., "Relation Modeling in Spatio-Temporal Action
Localization", AVA-Kinetics 2021).

Figure, left to right: each person's RoI features are cut into positions; for every position the features of
all persons of the clip at that position form one sequence, and one Transformer encoder, shared by all
positions, relates the persons. The encoder outputs are averaged over positions into the person's
representation, which fully connected layers classify.

- S-only: the 7x7 spatial positions of ``roi_spatial`` (already aggregated over time, by average).
- T-only: the T_s time steps of ``roi_temporal`` (already aggregated over space, by max).

The paper gives no widths: ``width`` 512, ``num_heads`` 8, ``depth`` 1 (one encoder layer), ``mlp_ratio`` 4,
``attn_dropout`` 0.1. Its optional memory (pooled features of neighbouring clips appended to each sequence) is
left to a bank head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cache_spec.views import ROI_SPATIAL, ROI_TEMPORAL
from heads._grouping import ClipGroups
from heads._layers import Classifier, CrossAttentionLayer
from heads.base import Head


class PersonRelationHead(Head):
    """Shared by S-only and T-only: per position, a Transformer encoder over the persons of the clip.

    ``last_attention``: ``encoder.{i}`` -> [n_boxes, positions, num_heads, max_actors].

    Args:
        in_channels: channels of ``roi_spatial`` / ``roi_temporal``, the store's ``C`` (SlowFast R50: 2304).
        num_classes: number of action classes (80 for AVA).
        width: the persons' token width, the encoder's and the hidden classifier layer's (not given: 512).
        num_heads: attention heads per encoder layer (not given: 8).
        depth: encoder layers (not given: 1).
        mlp_ratio: the feed-forward's hidden width as a multiple of ``width`` (not given; Transformer: 4).
        attn_dropout: dropout inside each encoder layer, on attention and feed-forward outputs (Transformer: 0.1).
        dropout: the classifier's dropout before the last linear layer (not given: 0.5).
    """

    view: ClassVar[str]

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 512,
        num_heads: int = 8,
        depth: int = 1,
        mlp_ratio: float = 4.0,
        attn_dropout: float = 0.1,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.proj = nn.Linear(in_channels, width)
        self.encoder = nn.ModuleList(
            CrossAttentionLayer(width, num_heads, mlp_ratio, attn_dropout) for _ in range(depth)
        )
        self.fc1 = nn.Linear(width, width)
        self.fc2 = Classifier(width, num_classes, dropout)
        self.last_attention: dict[str, torch.Tensor] = {}

    def forward(self, views: Mapping[str, torch.Tensor], box_clip: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(views[self.view].float().flatten(2).transpose(1, 2))  # [n, P, d]
        groups = ClipGroups.from_box_clip(box_clip)
        n_pos = tokens.shape[1]
        # one sequence per (clip, position): [G * P, A, d]; the padding mask repeats for every position
        x = groups.pad(tokens).transpose(1, 2).flatten(0, 1)
        mask = groups.key_padding_mask.repeat_interleave(n_pos, dim=0)
        attention = {}
        for i, layer in enumerate(self.encoder):
            x, weights = layer(x, x, mask)  # weights [G * P, num_heads, A, A]
            per_box = weights.unflatten(0, (groups.num_groups, n_pos)).permute(0, 3, 1, 2, 4)  # [G, A, P, h, A]
            attention[f"encoder.{i}"] = groups.unpad(per_box).detach()
        self.last_attention = attention
        person = groups.unpad(x.unflatten(0, (groups.num_groups, n_pos)).transpose(1, 2)).mean(dim=1)  # [n, d]
        return self.fc2(F.relu(self.fc1(person)))


class SOnlyHead(PersonRelationHead):
    """S-only: one sequence over the clip's persons per 7x7 position of ``roi_spatial``.

    Args: those of :class:`PersonRelationHead`.
    """

    views = (ROI_SPATIAL,)
    view = ROI_SPATIAL


class TOnlyHead(PersonRelationHead):
    """T-only: one sequence over the clip's persons per time step of ``roi_temporal``.

    Args: those of :class:`PersonRelationHead`.
    """

    views = (ROI_TEMPORAL,)
    view = ROI_TEMPORAL
