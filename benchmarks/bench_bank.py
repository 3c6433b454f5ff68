"""Bank size at the paper's sizes and window retrieval time for one training batch (cache_spec.bank).

Sizes: SlowFast R50 ``roi_pooled`` entries (2304 channels, float16), AVA videos of ~900 s annotated at 1 Hz with
up to 5 actors a second. Retrieval: a batch of 16 clips (8 actors each) asks for its windows, w = 10 s (ACAR's
21 s window) and w = 30 s (LFB's 60 s), excluding each clip's own entries; timed for the index alone and with the
features gathered, from memory and from disk (memory-mapped chunks, page cache warm), against two baselines:
copying the batch's own 128 actor features, and a linear head's forward + backward on them (torch, CPU).

    /work/venv/bin/python benchmarks/bench_bank.py [--videos 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cache_spec.bank import create_bank, open_bank

CHANNELS, DTYPE = 2304, "float16"
VIDEO_SECONDS, ACTORS_PER_SECOND = 900, 5
BATCH_CLIPS, BATCH_ACTORS, CLASSES = 16, 8, 80


def _time(fn: Callable[[], object], repeat: int = 30) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _entries(videos: int) -> pd.DataFrame:
    n_t = VIDEO_SECONDS
    video = np.repeat([f"vid{v:03d}" for v in range(videos)], n_t * ACTORS_PER_SECOND)
    t = np.tile(np.repeat(np.arange(902, 902 + n_t, dtype=np.float64), ACTORS_PER_SECOND), videos)
    clip_row = np.repeat(np.arange(videos * n_t), ACTORS_PER_SECOND)
    n = len(video)
    return pd.DataFrame(
        {
            "video_id": video,
            "timestamp": t,
            "clip_row": clip_row,
            "x1": 0.1,
            "y1": 0.1,
            "x2": 0.5,
            "y2": 0.9,
            "score": np.linspace(0.5, 1, n, dtype=np.float32),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    args = parser.parse_args()
    entries = _entries(args.videos)
    n = len(entries)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n, CHANNELS), dtype=np.float32).astype(DTYPE)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lfb.bank"
        start = time.perf_counter()
        create_bank(path, "lfb", {"store": "bench"}, entries, feats, DTYPE)
        write_s = time.perf_counter() - start
        chunk_bytes = sum(f.stat().st_size for f in (path / "features" / "c").rglob("*") if f.is_file())
        manifest_bytes = (path / "manifest" / "entries.parquet").stat().st_size
        feature_entry = CHANNELS * np.dtype(DTYPE).itemsize
        per_video = VIDEO_SECONDS * ACTORS_PER_SECOND
        print(
            f"bank: {args.videos} videos x {VIDEO_SECONDS} s x {ACTORS_PER_SECOND} actors/s = {n} entries, "
            f"written in {write_s:.2f} s"
        )
        print(
            f"bytes per entry: features {feature_entry} + manifest {manifest_bytes / n:.1f} "
            f"(on disk: chunks {chunk_bytes / n:.1f})"
        )
        print(
            f"per AVA video ({per_video} entries): {per_video * (feature_entry + manifest_bytes / n) / 2**20:.1f} MiB;"
            f" AVA train (235 videos): {235 * per_video * feature_entry / 2**30:.2f} GiB"
        )

        memory = open_bank(path, {"store": "bench"})
        disk = open_bank(path, {"store": "bench"}, memory_budget_bytes=0)
        clips = rng.integers(0, args.videos * VIDEO_SECONDS, BATCH_CLIPS)
        videos = np.array([f"vid{c // VIDEO_SECONDS:03d}" for c in clips])
        ts = 902.0 + clips % VIDEO_SECONDS
        own = rng.integers(0, n, BATCH_CLIPS * BATCH_ACTORS)
        copy_s = _time(lambda: memory.features(own))
        head_s = _head_time(feats[own])
        print(
            f"baselines per batch ({BATCH_CLIPS} clips x {BATCH_ACTORS} actors): copy own features "
            f"{copy_s * 1e6:.0f} us; linear head fwd+bwd " + (f"{head_s * 1e6:.0f} us" if head_s else "n/a (no torch)")
        )
        print(
            f"{'window':>8} {'rows':>6} {'index us':>9} {'+mem us':>8} {'+disk us':>9} "
            f"{'mem/copy':>9} {'disk/copy':>10} {'mem/head':>9} {'disk/head':>10}"
        )
        for w in (10.0, 30.0):
            rows, _ = memory.windows(videos, ts, w, clips)
            index_s = _time(lambda w=w: memory.windows(videos, ts, w, clips))
            mem_s = _time(lambda w=w: memory.features(memory.windows(videos, ts, w, clips)[0]))
            disk_s = _time(lambda w=w: disk.features(disk.windows(videos, ts, w, clips)[0]))
            head = (f"{mem_s / head_s:>9.3f} {disk_s / head_s:>10.3f}") if head_s else f"{'n/a':>9} {'n/a':>10}"
            print(
                f"{2 * w + 1:>6.0f} s {len(rows):>6} {index_s * 1e6:>9.0f} {mem_s * 1e6:>8.0f} {disk_s * 1e6:>9.0f} "
                f"{mem_s / copy_s:>9.1f} {disk_s / copy_s:>10.1f} {head}"
            )


def _head_time(batch: np.ndarray) -> float | None:
    """Forward + backward of a linear classifier on the batch's own actor features (CPU), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    head = torch.nn.Linear(CHANNELS, CLASSES)
    x = torch.from_numpy(batch.astype(np.float32))
    target = torch.zeros(len(batch), CLASSES)

    def step() -> None:
        head.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(head(x), target).backward()

    return _time(step)


if __name__ == "__main__":
    main()
