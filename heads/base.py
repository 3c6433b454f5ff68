"""What every head shares: the cache views it reads, and one forward signature over a batch of whole clips."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn


class Head(nn.Module):
    """A head maps the cache views of a batch of clips to per-box logits [n_boxes, num_classes].

    ``views`` holds box-row views ([n_boxes, ...]) and clip-row views ([n_clips, ...]); ``box_clip`` [n_boxes]
    says which clip of the batch each box belongs to, so relation heads can group a clip's actors. Views may
    arrive as float16 (the cache's dtype); heads compute in float32.

    Grouping: a head that relates actors does so among the actors of one clip only. It pads them to
    [n_groups, max_actors, ...] with ``heads._grouping.ClipGroups`` (one group per clip that has boxes) and
    masks the padded slots out of the keys, so adding a clip to a batch never changes another clip's outputs.

    Attention: every head that attends sets ``self.last_attention`` during each forward, so the weights can be
    inspected without changing what ``forward`` returns: a dict from a layer's name to its weights (detached,
    float32) whose last dimension runs over the keys, each row summing to 1, padded key slots at exactly 0.
    Box-row entries are [n_boxes, ...]; each head's docstring gives its names and shapes. Heads without
    attention (linear, ACRN, ACAR's relation-network variant) leave it empty or do not have it.
    """

    # The class attribute is the default variant's set (what ``pipeline heads`` lists and extraction stores for
    # the head); a variant that reads other views sets ``self.views`` in ``__init__``, and training reads that.
    views: tuple[str, ...] = ()
    # The store dimension the default ``from_dims`` passes as the constructor's first argument, ``in_channels``.
    in_channels_dim: ClassVar[str] = "C"

    @classmethod
    def from_dims(cls, dims: Mapping[str, int], num_classes: int, **options: Any) -> Head:
        """Build the head sized for a store's dimensions (``C``, ``H``, ...), so it adapts to the backbone.

        The default is the common case, a constructor ``(in_channels, num_classes, **options)`` with
        ``in_channels = dims[cls.in_channels_dim]``; a head sized by more than one dimension overrides it.
        """
        return cls(dims[cls.in_channels_dim], num_classes, **options)

    def forward(self, views: Mapping[str, torch.Tensor], box_clip: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
