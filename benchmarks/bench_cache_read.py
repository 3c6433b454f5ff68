"""Shuffled mini-batch reads through the stage-two reader against np.memmap reads of the same bytes.

For each shard size and each loader mode (views loaded into memory once / streamed shard by shard), one
epoch of shuffled batches of whole clips is read through ``ClipBatchLoader`` and, in the same run, the same
batches (same rows, same order) are read from a raw ``np.memmap`` of the same bytes with a warm page cache.
Prints GB/s for both and the ratio reader / memmap (>= 0.5 is the target).

    python benchmarks/bench_cache_read.py --clips 1500 --channels 2304
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from cache_spec.reader import ClipBatchLoader
from cache_spec.testing import random_store
from cache_spec.views import CONTEXT_MAP, ROI_POOLED, get_view


def memmap_epoch(maps: dict[str, np.memmap], batches: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """Read the given (clip rows, box rows) batches from memmaps; returns bytes read."""
    nbytes = 0
    for clips, boxes in batches:
        for view, mm in maps.items():
            rows = clips if get_view(view).rows == "clips" else boxes
            nbytes += np.asarray(mm[rows]).nbytes
    return nbytes


def loader_epoch(loader: ClipBatchLoader) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
    nbytes, batches = 0, []
    for batch in loader:
        nbytes += sum(a.nbytes for a in batch.views.values())
        batches.append((batch.clip_index, batch.box_index))
    return nbytes, batches


def best_of(repeats: int, fn):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=1500)
    parser.add_argument("--channels", type=int, default=2304, help="C of roi_pooled/context_map (SlowFast R50: 2304)")
    parser.add_argument("--map", type=int, nargs=2, default=(8, 10), metavar=("H", "W"))
    parser.add_argument("--batch-clips", type=int, default=16)
    parser.add_argument("--shard-sizes", type=int, nargs="+", default=(16, 64, 256), help="clips per shard")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the stores (default: a temp dir)")
    args = parser.parse_args()
    views = (ROI_POOLED, CONTEXT_MAP)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"{args.clips} clips, C={args.channels}, map {args.map[0]}x{args.map[1]}, batches of {args.batch_clips}")
        print(f"{'clips/shard':>11} {'mode':>9} {'reader GB/s':>12} {'memmap GB/s':>12} {'ratio':>6}")
        for clips_per_shard in args.shard_sizes:
            root = Path(tmp) / f"cps{clips_per_shard}"
            store, full = random_store(
                root / "store.zarr",
                n_clips=args.clips,
                channels=args.channels,
                map_hw=tuple(args.map),
                clips_per_shard=clips_per_shard,
                views=views,
            )
            maps = {}
            for view in views:
                np.save(root / f"{view}.npy", full[view])
                maps[view] = np.load(root / f"{view}.npy", mmap_mode="r")
            del full
            for mode, budget in (("memory", 1 << 40), ("streamed", 0)):
                t_load, loader = best_of(
                    1, partial(ClipBatchLoader, store, views, batch_clips=args.batch_clips, memory_budget_bytes=budget)
                )
                loader_epoch(loader)  # warm the page cache for both sides
                t_reader, (nbytes, batches) = best_of(args.repeats, partial(loader_epoch, loader))
                memmap_epoch(maps, batches)
                t_mm, mm_bytes = best_of(args.repeats, partial(memmap_epoch, maps, batches))
                assert mm_bytes == nbytes
                r, m = nbytes / t_reader / 1e9, nbytes / t_mm / 1e9
                print(f"{clips_per_shard:>11} {mode:>9} {r:>12.2f} {m:>12.2f} {r / m:>6.2f}")
                if mode == "memory":
                    print(f"{'':>11} {'':>9} (one-time load into memory: {t_load:.2f} s)")


if __name__ == "__main__":
    main()
