"""One epoch of linear-head training from the cache against one epoch with the frozen backbone in the loop.

Same clips, same boxes, same head and optimiser. The end-to-end side decodes each clip, runs the (frozen)
backbone and RoIAligns the boxes every epoch, which is what head ablations cost without a cache.

    python benchmarks/bench_head_vs_end_to_end.py --videos 8 --preset small
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cache_spec.reader import ClipBatchLoader
from cache_spec.store import open_store
from cache_spec.views import ROI_POOLED
from heads import LinearHead
from stages.data.layout import DataLayout
from stages.data.synth import SynthConfig, generate
from stages.data.video import decode_clips
from stages.extract import ExtractConfig, extract
from stages.models.backbones import BackboneConfig, load_backbone, pool_context
from stages.models.slowfast import roi_pool_features
from stages.models.trained_head import box_mask, multi_hot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-clips", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(SynthConfig(num_videos_train=args.videos, num_videos_val=0), data)
        config = ExtractConfig(
            data=DataLayout(data),
            split="train",
            out=Path(tmp) / "s.zarr",
            backbone=BackboneConfig(preset=args.preset),
            box_sources=("gt",),
        )
        extract(config)
        store = open_store(config.out)
        class_ids = sorted({c for labels in store.boxes["labels"] for c in labels})
        targets = torch.from_numpy(multi_hot(store.boxes["labels"], class_ids))
        loss_fn = nn.BCEWithLogitsLoss()

        def step(head: LinearHead, optimiser: torch.optim.Optimizer, pooled: torch.Tensor, rows: np.ndarray) -> None:
            loss = loss_fn(head({ROI_POOLED: pooled}, torch.zeros(0)), targets[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

        torch.manual_seed(0)
        head = LinearHead(store.dims["C"], len(class_ids))
        optimiser = torch.optim.AdamW(head.parameters(), lr=1e-3)
        loader = ClipBatchLoader(store, [ROI_POOLED], batch_clips=args.batch_clips, box_mask=box_mask(store, "gt"))
        start = time.perf_counter()
        for batch in loader:
            step(head, optimiser, torch.from_numpy(batch.views[ROI_POOLED]), batch.box_index)
        cached = time.perf_counter() - start

        backbone, _ = load_backbone(config.backbone)
        head = LinearHead(store.dims["C"], len(class_ids))
        optimiser = torch.optim.AdamW(head.parameters(), lr=1e-3)
        starts, counts = store.clips["box_start"].to_numpy(), store.clips["box_count"].to_numpy()
        map_boxes = torch.from_numpy(store.boxes[["fx1", "fy1", "fx2", "fy2"]].to_numpy(np.float32))
        start = time.perf_counter()
        pending: list[tuple[int, torch.Tensor]] = []
        clips = decode_clips(store.clips, DataLayout(data).video, config.input_sampling)
        for i, (index, tensor, _) in enumerate(clips):
            pending.append((index, tensor))
            if len(pending) == args.batch_clips or i == len(store.clips) - 1:
                index = np.array([p[0] for p in pending])
                rows = np.concatenate([np.arange(starts[c], starts[c] + counts[c]) for c in index])
                owner = torch.from_numpy(np.repeat(np.arange(len(index)), counts[index]))
                with torch.no_grad():
                    context = pool_context(backbone(torch.stack([p[1] for p in pending])))
                    pooled = roi_pool_features(context, map_boxes[rows], owner, spatial_scale=1.0)
                step(head, optimiser, pooled, rows)
                pending = []
        end_to_end = time.perf_counter() - start
    n = loader.num_boxes
    print(f"{len(store.clips)} clips, {n} boxes, backbone {args.preset}, batches of {args.batch_clips} clips")
    print(f"from the cache          {cached:8.3f} s/epoch  ({n / cached:10.0f} boxes/s)")
    print(f"frozen backbone in loop {end_to_end:8.3f} s/epoch  ({n / end_to_end:10.0f} boxes/s)")
    print(f"speed-up                {end_to_end / cached:8.0f}x")


if __name__ == "__main__":
    main()
