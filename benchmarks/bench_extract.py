"""Throughput of the whole `extract` (decode + forward + RoIAlign + write, overlapped) against the bare forward.

Both run in one process on the same clips of a synthetic data set: first the bare backbone forward over
pre-decoded, preprocessed clips in batches of the same size, then a full extraction into a fresh store.
Prints clips/s for both and the ratio (target >= 0.85).

    python benchmarks/bench_extract.py --videos 8 --preset small
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from stages.data.layout import DataLayout
from stages.data.manifest import build_manifest
from stages.data.synth import SynthConfig, generate
from stages.data.video import decode_clips
from stages.extract import ExtractConfig, extract, silent_progress
from stages.models.backbones import BackboneConfig, load_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--duration", type=int, default=12)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-clips", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(SynthConfig(num_videos_train=args.videos, num_videos_val=0, duration_s=args.duration), data)
        config = ExtractConfig(
            data=DataLayout(data),
            split="train",
            out=Path(tmp) / "store.zarr",
            backbone=BackboneConfig(preset=args.preset),
            batch_clips=args.batch_clips,
        )
        clips, _ = build_manifest(config.manifest, config.input_sampling, config.backbone.stride)
        tensors = [t for _, t, _ in decode_clips(clips, DataLayout(data).video, config.sampling)]
        model, _ = load_backbone(config.backbone)

        @torch.inference_mode()
        def bare_forward() -> float:
            start = time.perf_counter()
            for lo in range(0, len(tensors), args.batch_clips):
                model(torch.stack(tensors[lo : lo + args.batch_clips]))
            return len(tensors) / (time.perf_counter() - start)

        bare_forward()  # warm-up
        # bare, full, bare: the machine is shared, so compare the full run with the bare runs on either side
        before = bare_forward()
        start = time.perf_counter()
        extract(config, progress=silent_progress)
        full = len(clips) / (time.perf_counter() - start)
        after = bare_forward()
        bare = (before + after) / 2
    print(
        f"{len(clips)} clips, backbone {args.preset}, batches of {args.batch_clips}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"bare forward        {bare:8.1f} clips/s  (before {before:.1f}, after {after:.1f})")
    print(
        f"pipeline extract    {full:8.1f} clips/s  (decode, forward, RoIAlign, write; with manifest and store set-up)"
    )
    print(f"ratio               {full / bare:8.2f}")


if __name__ == "__main__":
    main()
