"""Time ``stages.metrics.dense`` frame-mAP and video-mAP on UCF101-24-sized synthetic input.

Ground truth: ``--videos`` test videos of ``--frames`` frames, one action class per video (as UCF101-24),
1-2 actor tubes each covering 40-100% of the video, boxes drifting smoothly. Frame detections: every
ground-truth box jittered (true class, high score) plus copies with wrong classes and random false
positives. Tubes: jittered, temporally trimmed copies of the ground-truth tubes, wrong-class copies and
random false-positive tubes. Both protocols are timed; ``--link-videos`` also times the MOC-style linker
on the frame detections of that many videos.

    python benchmarks/bench_dense_eval.py                      # ~900 videos x 150 frames, 24 classes
    python benchmarks/bench_dense_eval.py --videos 100 --frames 60
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.data.act import dense_dataset_from_dict  # noqa: E402
from stages.metrics.dense import frame_map, video_map  # noqa: E402
from stages.metrics.tubes import DETECTION_COLUMNS, LinkParams, Tube, link_tubes  # noqa: E402

W, H = 320, 240


def make_ground_truth(videos: int, frames: int, classes: int, rng: np.random.Generator):
    names = [f"class{c:02d}/v_{i:04d}" for i, c in enumerate(rng.integers(0, classes, videos))]
    gttubes = {}
    for v in names:
        label = int(v[5:7])
        tubes = []
        for _ in range(int(rng.integers(1, 3))):
            length = int(rng.integers(int(0.4 * frames), frames + 1))
            start = int(rng.integers(1, frames - length + 2))
            f = np.arange(start, start + length)
            w, h = rng.uniform(40, 100), rng.uniform(80, 160)
            x = np.clip(rng.uniform(0, W - w) + np.cumsum(rng.normal(0, 1.5, length)), 0, W - w)
            y = np.clip(rng.uniform(0, H - h) + np.cumsum(rng.normal(0, 0.8, length)), 0, H - h)
            tubes.append(np.column_stack([f, x, y, x + w, y + h]).round(1))
        gttubes[v] = {label: tubes}
    data = {
        "labels": [f"class{c:02d}" for c in range(classes)],
        "train_videos": [[]],
        "test_videos": [names],
        "nframes": {v: frames for v in names},
        "resolution": {v: (H, W) for v in names},
        "gttubes": gttubes,
    }
    return dense_dataset_from_dict(data, "<synthetic>")


def make_frame_detections(ds, classes: int, fp_per_frame: float, rng: np.random.Generator) -> pd.DataFrame:
    gt = ds.gt_boxes(ds.videos())
    n = len(gt)
    boxes = gt[["x1", "y1", "x2", "y2"]].to_numpy()
    wh = boxes[:, 2:] - boxes[:, :2]
    parts = []
    for copy in range(3):  # the true class, then two wrong ones
        jitter = rng.normal(0, 0.06, (n, 4)) * np.tile(wh, 2)
        b = boxes + jitter
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
        label = gt["label"].to_numpy() if copy == 0 else rng.integers(0, classes, n)
        score = rng.beta(5, 2, n) if copy == 0 else rng.beta(2, 5, n)
        keep = rng.random(n) < (0.9 if copy == 0 else 0.5)
        parts.append(
            pd.DataFrame({"video": gt["video"], "frame": gt["frame"], "label": label, "score": score}).assign(
                x1=b[:, 0], y1=b[:, 1], x2=b[:, 2], y2=b[:, 3]
            )[keep]
        )
    frames = [(v, f) for v in ds.videos() for f in range(1, ds.nframes[v] + 1)]
    counts = rng.poisson(fp_per_frame, len(frames))
    idx = np.repeat(np.arange(len(frames)), counts)
    m = len(idx)
    xy = rng.uniform(0, 1, (m, 2)) * [W - 40, H - 60]
    size = rng.uniform([30, 50], [100, 160], (m, 2))
    parts.append(
        pd.DataFrame(
            {
                "video": [frames[i][0] for i in idx],
                "frame": [frames[i][1] for i in idx],
                "label": rng.integers(0, classes, m),
                "score": rng.beta(1.5, 6, m),
                "x1": xy[:, 0],
                "y1": xy[:, 1],
                "x2": np.minimum(xy[:, 0] + size[:, 0], W),
                "y2": np.minimum(xy[:, 1] + size[:, 1], H),
            }
        )
    )
    det = pd.concat(parts, ignore_index=True)
    return det.sample(frac=1.0, random_state=0).reset_index(drop=True)[DETECTION_COLUMNS]


def make_tubes(ds, classes: int, fp_tubes: float, rng: np.random.Generator) -> list[Tube]:
    tubes = []
    for v in ds.videos():
        for label, gts in ds.gttubes[v].items():
            for g in gts:
                for copy in range(3):
                    lo = int(rng.integers(0, max(1, len(g) // 5)))
                    hi = len(g) - int(rng.integers(0, max(1, len(g) // 5)))
                    rows = g[lo:hi].copy()
                    wh = rows[:, 3:5] - rows[:, 1:3]
                    rows[:, 1:5] += rng.normal(0, 0.05, (len(rows), 4)) * np.tile(wh, 2)
                    rows[:, 3:5] = np.maximum(rows[:, 3:5], rows[:, 1:3] + 1)
                    lab = label if copy < 2 else int(rng.integers(0, classes))
                    score = float(rng.beta(5, 2) if copy == 0 else rng.beta(2, 5))
                    tubes.append(Tube(v, lab, score, np.column_stack([rows, np.full(len(rows), score)])))
        for _ in range(int(rng.poisson(fp_tubes))):
            n = ds.nframes[v]
            s = int(rng.integers(1, n))
            e = int(rng.integers(s, n + 1))
            f = np.arange(s, e + 1)
            x, y = rng.uniform(0, W - 100), rng.uniform(0, H - 160)
            box = np.tile([x, y, x + 80, y + 140], (len(f), 1))
            score = float(rng.beta(1.5, 6))
            tubes.append(
                Tube(v, int(rng.integers(0, classes)), score, np.column_stack([f, box, np.full(len(f), score)]))
            )
    return tubes


def timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    print(f"{label:<38s} {time.perf_counter() - t0:8.2f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=900)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--fp-per-frame", type=float, default=3.0)
    ap.add_argument("--fp-tubes", type=float, default=3.0, help="false-positive tubes per video")
    ap.add_argument("--link-videos", type=int, default=20, help="also time the linker on this many videos (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    ds = timed("generate ground truth", lambda: make_ground_truth(args.videos, args.frames, args.classes, rng))
    det = timed("generate frame detections", lambda: make_frame_detections(ds, args.classes, args.fp_per_frame, rng))
    tubes = timed("generate tubes", lambda: make_tubes(ds, args.classes, args.fp_tubes, rng))
    n_gt_boxes = sum(len(t) for d in ds.gttubes.values() for ts in d.values() for t in ts)
    n_gt_tubes = sum(len(ts) for d in ds.gttubes.values() for ts in d.values())
    print(
        f"{args.videos} videos x {args.frames} frames, {args.classes} classes: {n_gt_tubes} GT tubes, "
        f"{n_gt_boxes} GT boxes, {len(det)} frame detections, {len(tubes)} detected tubes"
    )
    for protocol in ("multisports", "act"):
        r = timed(f"frame-mAP@0.5 [{protocol}]", lambda p=protocol: frame_map(ds, det, p))
        print(f"    frame-mAP@0.5 = {r.overall:.4f}")
        r = timed(f"video-mAP, all thresholds [{protocol}]", lambda p=protocol: video_map(ds, tubes, p))
        print("    video-mAP " + ", ".join(f"@{t:g}={v:.4f}" for t, v in sorted(r.per_threshold.items())))
        print("    " + ", ".join(f"{k}: {v:.4f}" for k, v in r.ranges.items()))
    if args.link_videos:
        sub = det[det["video"].isin(ds.videos()[: args.link_videos])]
        linked = timed(
            f"link_tubes on {args.link_videos} videos ({len(sub)} dets)",
            lambda: link_tubes(sub, LinkParams(), nframes=ds.nframes),
        )
        print(f"    {len(linked)} tubes")


if __name__ == "__main__":
    main()
