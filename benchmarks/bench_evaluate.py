"""Time ``stages.metrics.ava.frame_map`` on AVA-sized synthetic input (optionally against the reference).

Ground truth: keyframes of 15-minute videos, 1-6 persons each, multi-label (one pose label plus
long-tailed extra labels over 60 classes). Detections: jittered ground-truth persons plus false-positive
boxes, each box scored for several classes (true labels tend to score higher). ``--tied-scores`` gives
every detection of a class the same score (a prior-only baseline), the worst case for tie handling.

    python benchmarks/bench_evaluate.py --keyframes 51000 --gt-rows 255000 --det-rows 1200000 --seed 0
    python benchmarks/bench_evaluate.py --reference /path/to/ActivityNet/Evaluation   # also time it

Besides the bare core it times ``pipeline ava-eval`` as a whole process (interpreter start, imports, reading the
label map and both CSVs, scoring, printing) on the same input written as CSVs, and prints the ratio of its CPU
time (``resource.getrusage(RUSAGE_CHILDREN)``) to the core's (``--no-cli`` skips it).

The reference needs numpy aliases removed in numpy 1.24 (``np.bool``, ``np.float``, ``np.NAN``); they
are set by a two-line bootstrap before its script runs.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.data.ava import write_annotations, write_detections  # noqa: E402
from stages.metrics.ava import frame_map  # noqa: E402

NUM_CLASSES = 60
KEYFRAMES_PER_VIDEO = 897  # AVA: seconds 902..1798


def make_input(
    keyframes: int,
    gt_rows: int,
    det_rows: int,
    seed: int,
    tied: bool,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic AVA-like ground truth and detections with roughly the requested row counts."""
    rng = np.random.default_rng(seed)
    freq = 1.0 / np.arange(1, NUM_CLASSES + 1) ** 1.1  # long tail
    freq /= freq.sum()

    video = np.arange(keyframes) // KEYFRAMES_PER_VIDEO
    ts = 902 + np.arange(keyframes) % KEYFRAMES_PER_VIDEO
    labels_per_person = 2.0
    persons_per_kf = gt_rows / keyframes / labels_per_person
    n_person = np.clip(rng.poisson(persons_per_kf, keyframes), 1, 12)
    p_kf = np.repeat(np.arange(keyframes), n_person)
    n_p = len(p_kf)
    xy = rng.random((n_p, 2)) * 0.6
    wh = 0.15 + rng.random((n_p, 2)) * 0.35
    boxes = np.round(np.hstack([xy, np.minimum(xy + wh, 1.0)]), 3)

    # labels: one pose class (ids 1..10 here) + geometric number of extra long-tail labels
    n_lab = 1 + rng.geometric(1 / labels_per_person, n_p) - 1
    g_person = np.repeat(np.arange(n_p), n_lab)
    first = np.r_[True, g_person[1:] != g_person[:-1]]
    g_cls = np.where(
        first,
        rng.integers(1, 11, len(g_person)),
        rng.choice(NUM_CLASSES, len(g_person), p=freq) + 1,
    )
    if len(g_person) > gt_rows:  # drop random rows, not whole keyframes at the end
        sub = np.sort(rng.choice(len(g_person), gt_rows, replace=False))
        g_person, g_cls = g_person[sub], g_cls[sub]
    first_person = np.searchsorted(p_kf, np.arange(keyframes))  # person index of each keyframe's first
    gt = pd.DataFrame(
        {
            "video_id": pd.Series(video[p_kf[g_person]]).map("vid{:04d}".format),
            "timestamp": ts[p_kf[g_person]],
            "x1": boxes[g_person, 0],
            "y1": boxes[g_person, 1],
            "x2": boxes[g_person, 2],
            "y2": boxes[g_person, 3],
            "action_id": g_cls,
            "person_id": g_person - first_person[p_kf[g_person]],
        }
    )

    # detection boxes: 90% of persons found (jittered) + false positives
    found = rng.random(n_p) < 0.9
    d_kf_t = p_kf[found]
    d_box_t = boxes[found] + rng.normal(0, 0.02, (int(found.sum()), 4))
    is_true = np.zeros((len(d_kf_t), NUM_CLASSES + 1), dtype=bool)
    keep = found[g_person]
    idx = np.cumsum(found) - 1
    is_true[idx[g_person[keep]], g_cls[keep]] = True
    n_fp = max(keyframes // 2, 1)
    d_kf_f = rng.integers(0, keyframes, n_fp)
    xy = rng.random((n_fp, 2)) * 0.6
    d_box_f = np.hstack([xy, xy + 0.15 + rng.random((n_fp, 2)) * 0.35])
    d_kf = np.concatenate([d_kf_t, d_kf_f])
    d_box = np.round(np.clip(np.vstack([d_box_t, d_box_f]), 0, 1), 3)
    is_true = np.vstack([is_true, np.zeros((n_fp, NUM_CLASSES + 1), dtype=bool)])

    per_box = max(1, min(NUM_CLASSES, -(-det_rows // len(d_kf))))
    # each box: its true classes first, then random extra classes, per_box in all
    noise = rng.random((len(d_kf), NUM_CLASSES)) + (~is_true[:, 1:]) * 2.0
    top = np.argsort(noise, axis=1)[:, :per_box]
    rows_box = np.repeat(np.arange(len(d_kf)), per_box)
    rows_cls = top.ravel() + 1
    truth = is_true[rows_box, rows_cls]
    if tied:
        score = np.round(freq[rows_cls - 1] / freq.max(), 4)
    else:
        score = np.round(np.where(truth, rng.beta(4, 2, len(truth)), rng.beta(1.5, 6, len(truth))), 6)
    sel = rng.permutation(len(rows_box))[:det_rows]
    sel = sel[np.lexsort((sel, d_kf[rows_box[sel]]))]  # grouped by keyframe, like a submission file
    det = pd.DataFrame(
        {
            "video_id": pd.Series(video[d_kf[rows_box[sel]]]).map("vid{:04d}".format),
            "timestamp": ts[d_kf[rows_box[sel]]],
            "x1": d_box[rows_box[sel], 0],
            "y1": d_box[rows_box[sel], 1],
            "x2": d_box[rows_box[sel], 2],
            "y2": d_box[rows_box[sel], 3],
            "action_id": rows_cls[sel],
            "score": score[sel],
        }
    )
    return gt, det


def run_reference(path: Path, gt: pd.DataFrame, det: pd.DataFrame) -> tuple[float, float, dict[int, float]]:
    """Time the ActivityNet evaluator on the same input as CSV; returns (seconds, mAP, per-class AP)."""
    with tempfile.TemporaryDirectory() as tmp:
        lm = Path(tmp, "labelmap.pbtxt")
        write_label_map_text(lm)
        gt.to_csv(Path(tmp, "gt.csv"), header=False, index=False)
        det.to_csv(Path(tmp, "det.csv"), header=False, index=False)
        script = path / "get_ava_performance.py"
        boot = (
            "import sys, runpy, numpy as np; np.bool = bool; np.float = float; np.NAN = np.nan; "
            f"sys.path[:0] = [{str(path)!r}, {str(path / 'ava')!r}]; sys.argv = sys.argv[1:]; "
            f"runpy.run_path({str(script)!r}, run_name='__main__')"
        )
        t0 = time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                boot,
                str(script),
                "-l",
                str(lm),
                "-g",
                f"{tmp}/gt.csv",
                "-d",
                f"{tmp}/det.csv",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - t0
    num = r"(?:np\.float64\()?([0-9.eE+-]+|nan)"
    mean = re.search(r"Precision/mAP@0\.5IOU': " + num, out.stdout)
    per_class = {int(c): float(v) for c, v in re.findall(r"AP@0\.5IOU/c(\d+)': " + num, out.stdout)}
    return elapsed, float(mean.group(1)) if mean else float("nan"), per_class


def write_label_map_text(path: Path) -> None:
    path.write_text("".join(f'item {{\n  name: "c{i}"\n  id: {i}\n}}\n' for i in range(1, NUM_CLASSES + 1)))


def time_cli(gt: pd.DataFrame, det: pd.DataFrame, repeats: int) -> tuple[list[float], list[float], float]:
    """Run ``pipeline ava-eval --json`` on the input as AVA CSVs; (CPU seconds, wall seconds, mAP) per run."""
    cpu, wall = [], []
    with tempfile.TemporaryDirectory() as tmp:
        lm, g, d = Path(tmp, "labelmap.pbtxt"), Path(tmp, "gt.csv"), Path(tmp, "det.csv")
        write_label_map_text(lm)
        write_annotations(gt, g)
        write_detections(det, d)
        command = [sys.executable, "-m", "pipeline.cli", "ava-eval", "-l", str(lm), "-g", str(g), "-d", str(d)]
        for _ in range(repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            out = subprocess.run([*command, "--json"], check=True, capture_output=True, text=True, cwd=ROOT)
            wall.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return cpu, wall, json.loads(out.stdout)["map"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--keyframes", type=int, default=51000)
    parser.add_argument("--gt-rows", type=int, default=255000)
    parser.add_argument("--det-rows", type=int, default=1200000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tied-scores", action="store_true", help="prior-only baseline: one score per class")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cli", action="store_true", help="skip timing `pipeline ava-eval` as a whole process")
    parser.add_argument(
        "--reference",
        type=Path,
        help="ActivityNet Evaluation/ folder (get_ava_performance.py)",
    )
    args = parser.parse_args()

    t0 = time.perf_counter()
    gt, det = make_input(args.keyframes, args.gt_rows, args.det_rows, args.seed, args.tied_scores)
    n_kf = det.groupby(["video_id", "timestamp"]).size()
    print(
        f"input: {gt[['video_id', 'timestamp']].drop_duplicates().shape[0]} keyframes, {len(gt)} gt rows, "
        f"{len(det)} detection rows (max {n_kf.max()} per keyframe), "
        f"generated in {time.perf_counter() - t0:.1f}s"
    )
    times, core_cpu = [], []
    for _ in range(args.repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        result = frame_map(gt, det, range(1, NUM_CLASSES + 1))
        times.append(time.perf_counter() - t0)
        core_cpu.append(time.process_time() - c0)
    print(
        f"frame_map: best {min(times):.2f}s wall, {min(core_cpu):.2f}s CPU of {args.repeats} "
        f"(wall: {', '.join(f'{t:.2f}' for t in times)})",
    )
    print(f"frame_map mAP: {result.mean_ap:.6f}")
    if not args.no_cli:
        cli_cpu, cli_wall, cli_map = time_cli(gt, det, args.repeats)
        print(
            f"pipeline ava-eval (whole process: start, imports, CSV reading, scoring): best {min(cli_wall):.2f}s "
            f"wall, {min(cli_cpu):.2f}s CPU of {args.repeats} (CPU: {', '.join(f'{t:.2f}' for t in cli_cpu)}); "
            f"mAP {cli_map:.6f}"
        )
        print(f"whole process / core: {min(cli_cpu) / min(core_cpu):.2f}x CPU, {min(cli_wall) / min(times):.2f}x wall")
    if args.reference:
        elapsed, ref_map, ref_ap = run_reference(args.reference, gt, det)
        print(f"reference: {elapsed:.1f}s (including CSV parsing), mAP {ref_map:.6f}")
        diffs = [abs(ref_ap[c] - ap) for c, ap in result.per_class_ap.items() if not np.isnan(ap)]
        same_nan = all(np.isnan(ref_ap[c]) == np.isnan(ap) for c, ap in result.per_class_ap.items())
        print(
            f"max |AP difference| over {len(diffs)} classes: {max(diffs, default=0.0):.3g}; "
            f"|mAP difference|: {abs(ref_map - result.mean_ap):.3g}; nan classes agree: {same_nan}"
        )


if __name__ == "__main__":
    main()
