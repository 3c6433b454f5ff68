"""Stage two's reader: shuffled mini-batches of whole clips (all of a clip's selected boxes together).

The loader chooses by size. Views whose total size fits ``memory_budget_bytes`` are loaded once and indexed
in memory; otherwise the store is streamed shard by shard in shuffled shard order through a shuffle buffer
of ``buffer_shards`` shards, so every file read is one large sequential read (design §3).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cache_spec.store import Store, StoreError
from cache_spec.views import get_view, manifest_view

log = logging.getLogger(__name__)


@dataclass
class ClipBatch:
    """A mini-batch of clips. Box-row views hold only the selected boxes, grouped by clip."""

    clip_index: np.ndarray  # [n_clips] store clip rows
    box_index: np.ndarray  # [n_boxes] store box rows
    box_clip: np.ndarray  # [n_boxes] position of each box's clip inside this batch (0..n_clips-1)
    views: dict[str, np.ndarray]

    @property
    def num_boxes(self) -> int:
        return len(self.box_index)


class ClipBatchLoader:
    """Iterate over a store in mini-batches of ``batch_clips`` clips; one pass per ``iter()``.

    ``box_mask`` selects box rows (e.g. ground-truth boxes only); clips left with no selected box are
    skipped. Each new iteration reshuffles (seeded by ``seed`` and the epoch count).
    """

    def __init__(
        self,
        store: Store,
        views: Sequence[str],
        *,
        batch_clips: int = 16,
        shuffle: bool = True,
        seed: int = 0,
        box_mask: np.ndarray | None = None,
        memory_budget_bytes: int = 2 << 30,
        buffer_shards: int = 4,
    ):
        missing_views = [v for v in views if v not in store.views and get_view(v).source == "store"]
        if missing_views:
            raise StoreError(
                f"store {store.path} lacks view(s) {missing_views} (it holds {', '.join(store.views)}); "
                f"re-extract with these views"
            )
        missing = store.missing_shards()
        if missing:
            raise StoreError(
                f"store {store.path} is incomplete: {len(missing)} of {store.num_shards} shards missing; "
                "re-run `pipeline extract` to finish it"
            )
        self.store = store
        self.views = list(views)
        self.batch_clips = batch_clips
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_shards = max(1, buffer_shards)
        self.box_mask = np.ones(len(store.boxes), bool) if box_mask is None else np.asarray(box_mask, bool)
        failed = store.failed_clips()
        clip_of_box = store.boxes["clip_index"].to_numpy()
        self.box_mask = self.box_mask & ~np.isin(clip_of_box, failed)
        self._box_start = store.clips["box_start"].to_numpy(np.int64)
        self._box_count = store.clips["box_count"].to_numpy(np.int64)
        self._clip_shard = store.clips["shard"].to_numpy(np.int64)
        selected_per_clip = np.bincount(clip_of_box[self.box_mask], minlength=len(store.clips))
        self.clip_ids = np.flatnonzero(selected_per_clip > 0)
        self._stored = [v for v in self.views if get_view(v).source == "store"]
        self._derived = {
            v: manifest_view(v, store.clips, store.boxes) for v in self.views if get_view(v).source == "manifest"
        }
        self.in_memory = sum(store.view_nbytes(v) for v in self._stored) <= memory_budget_bytes
        self._arrays: dict[str, np.ndarray] = dict(self._derived)
        if self.in_memory:
            self._arrays.update({v: store.read_view(v) for v in self._stored})
        log.debug(
            "loader over %s: %d clips, %s",
            store.path,
            len(self.clip_ids),
            "in memory" if self.in_memory else "streamed",
        )
        self._epoch = 0

    def __len__(self) -> int:
        return -(-len(self.clip_ids) // self.batch_clips)

    @property
    def num_boxes(self) -> int:
        return int(self.box_mask.sum())

    def __iter__(self) -> Iterator[ClipBatch]:
        rng = np.random.default_rng((self.seed, self._epoch))
        self._epoch += 1
        if self.in_memory:
            order = rng.permutation(self.clip_ids) if self.shuffle else self.clip_ids
            for lo in range(0, len(order), self.batch_clips):
                yield self._gather(order[lo : lo + self.batch_clips])
        else:
            yield from self._stream(rng)

    # ---- internals --------------------------------------------------------------------------------------
    def _boxes_of(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Selected box rows of ``clips`` (in clip order) and each box's position in ``clips``."""
        counts = self._box_count[clips]
        starts = self._box_start[clips]
        rows = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        owner = np.repeat(np.arange(len(clips)), counts)
        keep = self.box_mask[rows]
        return rows[keep], owner[keep]

    def _gather(self, clips: np.ndarray) -> ClipBatch:
        boxes, owner = self._boxes_of(clips)
        views = {v: self._arrays[v][clips if get_view(v).rows == "clips" else boxes] for v in self.views}
        return ClipBatch(clip_index=clips, box_index=boxes, box_clip=owner, views=views)

    def _stream(self, rng: np.random.Generator) -> Iterator[ClipBatch]:
        shards = [s for s in range(self.store.num_shards) if len(self._clips_in(s))]
        if self.shuffle:
            shards = list(rng.permutation(shards))
        for lo in range(0, len(shards), self.buffer_shards):
            group = sorted(shards[lo : lo + self.buffer_shards])
            # Map each buffered shard once; batches gather their rows straight from the maps.
            maps = {s: {v: self.store.read_shard(v, s, mmap=True) for v in self._stored} for s in group}
            clips = np.concatenate([self._clips_in(s) for s in group])
            if self.shuffle:
                clips = rng.permutation(clips)
            for b in range(0, len(clips), self.batch_clips):
                yield self._gather_from_shards(np.sort(clips[b : b + self.batch_clips]), maps)

    def _gather_from_shards(self, clips: np.ndarray, maps: dict[int, dict[str, np.ndarray]]) -> ClipBatch:
        """Gather a batch (clips sorted, so grouped by shard) with one copy per row into the output."""
        boxes, owner = self._boxes_of(clips)
        shard_of_clip = self._clip_shard[clips]
        shard_of_box = shard_of_clip[owner]
        views = {v: a[clips if get_view(v).rows == "clips" else boxes] for v, a in self._derived.items()}
        for view in self._stored:
            by_clip = get_view(view).rows == "clips"
            rows, row_shard = (clips, shard_of_clip) if by_clip else (boxes, shard_of_box)
            out = np.empty((len(rows), *self.store.row_shape(view)), dtype=self.store.dtype)
            for shard in np.unique(row_shard):
                lo, hi = np.searchsorted(row_shard, [shard, shard + 1])
                first = self.store.shards[shard].rows(get_view(view).rows)[0]
                np.take(
                    maps[shard][view], rows[lo:hi] - first, axis=0, out=out[lo:hi], mode="clip"
                )  # "raise" buffers `out`
            views[view] = out
        return ClipBatch(clip_index=clips, box_index=boxes, box_clip=owner, views=views)

    def _clips_in(self, shard: int) -> np.ndarray:
        rng = self.store.shards[shard]
        lo, hi = np.searchsorted(self.clip_ids, [rng.clip_start, rng.clip_stop])
        return self.clip_ids[lo:hi]
