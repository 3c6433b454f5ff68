"""Training throughput (boxes per second) and peak memory of every head on random cache-shaped batches.

Batches are what stage two feeds a head: float16 views of the synthetic store's dimensions (C=288, C_s=256,
C_f=32, H=8, W=10, T_s=4, T_f=16), 16 clips with about 3 boxes each (1-5, fixed seed). A step is forward,
BCE loss, backward and an AdamW update. Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU
each head runs in its own process and the growth of its peak resident set (``getrusage``) is reported, since
torch's CPU allocations are invisible to ``tracemalloc``.

    python benchmarks/bench_heads.py                        # every head, paper widths
    python benchmarks/bench_heads.py --heads acar stca --steps 10 --option acar.depth=1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache_spec.views import VIEWS  # noqa: E402
from heads import HEADS, build_head  # noqa: E402

SYNTH_DIMS = {"C": 288, "C_s": 256, "C_f": 32, "H": 8, "W": 10, "T_s": 4, "T_f": 16}


def make_batch(
    views: tuple[str, ...], clips: int, seed: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random ReLU'd float16 views and the box -> clip index of one batch."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 6, (clips,), generator=gen)
    box_clip = torch.repeat_interleave(torch.arange(clips), counts)
    out = {}
    for view in views:
        spec = VIEWS[view]
        rows = clips if spec.rows == "clips" else len(box_clip)
        out[view] = torch.randn(rows, *spec.shape(SYNTH_DIMS), generator=gen).relu_().half().to(device)
    return out, box_clip.to(device)


def _warm_up_runtime(device: torch.device) -> None:
    layer = torch.nn.Linear(8, 8).to(device)
    optimiser = torch.optim.AdamW(layer.parameters())
    layer(torch.randn(4, 8, device=device)).sum().backward()
    optimiser.step()


def bench_one(name: str, options: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Time ``args.steps`` training steps of one head (after ``args.warmup`` untimed ones)."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    views, box_clip = make_batch(HEADS[name].views, args.clips, args.seed, device)
    targets = (torch.rand(len(box_clip), args.classes, device=device) < 0.1).float()
    _warm_up_runtime(device)  # so the baseline already holds torch's own lazily allocated buffers
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    head = build_head(name, SYNTH_DIMS, args.classes, **options).to(device).train()
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        loss = loss_fn(head(views, box_clip), targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak_mib = (torch.cuda.max_memory_allocated(device) - cuda_before) / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024  # Linux: KiB
    seconds = (time.perf_counter() - start) / args.steps
    return {
        "head": name,
        "params_m": sum(p.numel() for p in head.parameters()) / 1e6,
        "boxes": len(box_clip),
        "step_ms": seconds * 1e3,
        "boxes_per_s": len(box_clip) / seconds,
        "peak_mib": peak_mib,
    }


def parse_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """``head.key=value`` strings -> {head: {key: value}}; values are read as JSON when they parse."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, _, value = item.partition("=")
        head, _, key = target.partition(".")
        if not key or head not in HEADS:
            raise SystemExit(f"--option wants head.key=value with a known head, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(head, {})[key] = parsed
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--option", action="append", default=[], help="head.key=value, e.g. acar.depth=1")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: bench one head, print JSON
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    options = parse_options(args.option)
    if args.one:
        print(json.dumps(bench_one(args.one, options.get(args.one, {}), args)))
        return
    rows = []
    for name in args.heads:
        if args.device.startswith("cuda"):
            rows.append(bench_one(name, options.get(name, {}), args))
        else:  # a fresh process per head, so each peak RSS is that head's own
            argv = [f"--{key}={getattr(args, key)}" for key in ("clips", "classes", "steps", "warmup", "seed")]
            argv += [f"--device={args.device}", f"--threads={args.threads}"]
            argv += [f"--option={item}" for item in args.option]
            done = subprocess.run(
                [sys.executable, __file__, *argv, "--one", name], check=True, capture_output=True, text=True
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    memory = "peak allocated MiB" if args.device.startswith("cuda") else "peak RSS growth MiB"
    print(f"{where}, {torch.get_num_threads()} threads; {args.clips} clips/batch, mean of {args.steps} steps")
    print(f"{'head':<8} {'params M':>9} {'boxes':>6} {'step ms':>9} {'boxes/s':>9} {memory:>20}")
    for r in rows:
        print(
            f"{r['head']:<8} {r['params_m']:>9.2f} {r['boxes']:>6d} {r['step_ms']:>9.1f} "
            f"{r['boxes_per_s']:>9.0f} {r['peak_mib']:>20.0f}"
        )


if __name__ == "__main__":
    main()
