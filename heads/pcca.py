"""PCCA, person-context cross attention (Ning et al., DeeperAction/MultiSports 2021).

Figure, left to right: the person vector (``roi_pooled``) is the query; its context is the 9x9 RoIAlign over
the person box enlarged 2x (``context_ext``), flattened to 81 key/value tokens. Both are projected to the
``width`` (1024). ``depth`` D = 3 post-LN cross-attention layers with ``num_heads`` 8 follow (eq. 2-3):
``X = LN(MultiHead(Q, C, C) + Q)``, ``Q = LN(FFN(X) + X)``; the context tokens are the same at every layer
(they are not updated). A linear classifier reads the final query.

The paper does not give the feed-forward width, dropout or any position embedding of the context tokens:
``mlp_ratio`` 4 and ``attn_dropout`` 0.1 follow the Transformer; ``position_embedding`` (off by default, as in the
paper's text) adds a learned embedding per context token so attention can tell where a token lies.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from cache_spec.views import CONTEXT_EXT, ROI_POOLED
from heads._layers import Classifier, CrossAttentionLayer, learned_positions
from heads.base import Head


class PCCAHead(Head):
    """Person-context cross attention: the actor vector attends to the 81 tokens of its enlarged box.

    ``last_attention``: ``layers.{i}`` -> [n_boxes, num_heads, 81].

    Args:
        in_channels: channels of ``roi_pooled`` and ``context_ext``, the store's ``C`` (SlowFast R50: 2304).
        num_classes: number of action classes (80 for AVA).
        width: the projection width of the person query and the context tokens (paper: 1024).
        num_heads: attention heads per layer (paper: 8).
        depth: cross-attention layers D (paper: 3).
        mlp_ratio: the feed-forward's hidden width as a multiple of ``width`` (not given; Transformer: 4).
        attn_dropout: dropout inside each layer, on attention and feed-forward outputs (not given; Transformer: 0.1).
        dropout: the classifier's dropout before the linear layer (not given; 0.5, as the SlowFast baseline).
        position_embedding: add a learned embedding per context token (not in the paper: off).
        context_tokens: the context tokens, h x w of ``context_ext`` (paper: 9 x 9 = 81).
    """

    views = (ROI_POOLED, CONTEXT_EXT)

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 1024,
        num_heads: int = 8,
        depth: int = 3,
        mlp_ratio: float = 4.0,
        attn_dropout: float = 0.1,
        dropout: float = 0.5,
        position_embedding: bool = False,
        context_tokens: int = 81,
    ):
        super().__init__()
        self.query_proj = nn.Linear(in_channels, width)
        self.context_proj = nn.Linear(in_channels, width)
        self.position = learned_positions(context_tokens, width) if position_embedding else None
        self.layers = nn.ModuleList(
            CrossAttentionLayer(width, num_heads, mlp_ratio, attn_dropout) for _ in range(depth)
        )
        self.classifier = Classifier(width, num_classes, dropout)
        self.last_attention: dict[str, torch.Tensor] = {}

    def forward(self, views: Mapping[str, torch.Tensor], box_clip: torch.Tensor) -> torch.Tensor:
        query = self.query_proj(views[ROI_POOLED].float())[:, None, :]  # [n, 1, d]
        context = self.context_proj(views[CONTEXT_EXT].float().flatten(2).transpose(1, 2))  # [n, 81, d]
        if self.position is not None:
            context = context + self.position
        attention = {}
        for i, layer in enumerate(self.layers):
            query, weights = layer(query, context)
            attention[f"layers.{i}"] = weights[:, :, 0, :].detach()
        self.last_attention = attention
        return self.classifier(query[:, 0])
