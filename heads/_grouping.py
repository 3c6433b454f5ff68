"""Grouping the actors of a batch by clip, so relation heads attend across the actors of one clip only.

Box-row views arrive flat ([n_boxes, ...]); a relation head pads them to ``[n_groups, max_actors, ...]`` with
:class:`ClipGroups`, attends with the padded slots masked out of the keys, and flattens the result back. One
group is made per clip that has boxes in the batch (clips without boxes get no group), so every group has at
least one valid key and a masked softmax never sees an all-masked row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClipGroups:
    """Where each box sits in the padded ``[n_groups, max_actors]`` layout of its clip's actors.

    ``clip[g]`` is group g's batch-local clip (index clip-row views with it), ``group[i]`` box i's group,
    ``slot[i]`` its position inside the group (boxes keep their batch order), ``valid`` [n_groups, max_actors]
    is True on real actors and False on padding.
    """

    clip: torch.Tensor
    group: torch.Tensor
    slot: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def from_box_clip(cls, box_clip: torch.Tensor) -> ClipGroups:
        """Groups from ``box_clip`` [n_boxes] (the batch-local clip of each box; need not be sorted)."""
        box_clip = box_clip.long().reshape(-1)
        if box_clip.numel() == 0:
            empty = box_clip.new_zeros(0)
            return cls(empty, empty, empty, torch.zeros(0, 0, dtype=torch.bool, device=box_clip.device))
        clip, group = torch.unique(box_clip, return_inverse=True)
        counts = torch.bincount(group)
        starts = torch.cumsum(counts, 0) - counts
        order = torch.sort(group, stable=True).indices
        slot = torch.empty_like(group)
        slot[order] = torch.arange(len(group), device=group.device) - starts[group[order]]
        max_actors = int(counts.max())
        valid = torch.arange(max_actors, device=group.device)[None, :] < counts[:, None]
        return cls(clip, group, slot, valid)

    @property
    def num_groups(self) -> int:
        return self.valid.shape[0]

    @property
    def max_actors(self) -> int:
        return self.valid.shape[1]

    @property
    def counts(self) -> torch.Tensor:
        """[n_groups] actors per group."""
        return self.valid.sum(dim=1)

    @property
    def key_padding_mask(self) -> torch.Tensor:
        """[n_groups, max_actors], True on padding: the convention of ``nn.MultiheadAttention``."""
        return ~self.valid

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[n_boxes, ...] -> [n_groups, max_actors, ...], zeros in the padded slots."""
        out = x.new_zeros(self.num_groups, self.max_actors, *x.shape[1:])
        out[self.group, self.slot] = x
        return out

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[n_groups, max_actors, ...] -> [n_boxes, ...] in the boxes' batch order (padded slots dropped)."""
        return x[self.group, self.slot]


def masked_softmax(scores: torch.Tensor, key_valid: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` with invalid keys at exactly zero weight.

    A finite fill (the dtype's minimum) rather than -inf keeps an all-masked row finite (uniform), so no NaN can
    reach a gradient even through rows that are later discarded.
    """
    filled = scores.masked_fill(~key_valid, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=dim) * key_valid
