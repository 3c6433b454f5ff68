"""SIGKILL `pipeline extract` and `pipeline train-head` at random moments, resume, compare with uninterrupted runs.

For extraction: after each kill the same command is run again; the resumed store must equal the uninterrupted one
view by view, and no shard that was finished before the kill may be written again (its completion record is
unchanged). For training: after each kill `train-head --resume` finishes the run; the head must equal the
uninterrupted head tensor by tensor. Run: ``python benchmarks/fault_injection.py [--kills 20]``
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from cache_spec.store import open_store
from stages.data.synth import SynthConfig, generate

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from pipeline.cli import run; run()"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # bit-equal runs need one thread count


def _params(data: Path, work: Path) -> dict:
    params = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    params["paths"] = {"data": str(data), "synth": str(data), "cache": str(work / "cache"), "runs": str(work / "runs")}
    params["backbone"]["checkpoint"] = None
    params["extract"].update(clips_per_shard=1, batch_clips=1, threads=1, heads=["linear"], views=["context_map"])
    params["train"].update(epochs=300, device="cpu")  # long enough that kills land mid-run
    return params


def _write(params: dict, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _run(args: list[str], params: Path, started: Path | None = None) -> float:
    """Run to the end; the seconds from ``started`` appearing (the work proper, after imports) to the end."""
    command = [*CLI, *args, "--params", str(params)]
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    begin = _when(proc, started)
    _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{args} failed: {err[-2000:]}")
    return time.perf_counter() - begin


def _when(proc: subprocess.Popen, started: Path | None) -> float:
    """The moment ``started`` exists (or the process ended), polled every 10 ms."""
    while started is not None and not started.exists() and proc.poll() is None:
        time.sleep(0.01)
    return time.perf_counter()


def _killed(args: list[str], params: Path, after: float, started: Path | None = None) -> None:
    """SIGKILL ``after`` seconds into the work proper (once ``started`` exists)."""
    command = [*CLI, *args, "--params", str(params)]
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _when(proc, started)
    time.sleep(after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _records(store: Path) -> dict[str, bytes]:
    done = store / "done"
    return {p.name: p.read_bytes() for p in sorted(done.glob("*.json"))} if done.is_dir() else {}


def _views(store: Path) -> dict[str, np.ndarray]:
    opened = open_store(store)
    return {view: opened.read_view(view) for view in opened.views}


def _head(runs: Path) -> dict[str, torch.Tensor]:
    return torch.load(runs / "train" / "head.pt", map_location="cpu", weights_only=True)["state_dict"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="extract,train", help="which runs to kill: extract, train or both")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "data"
        generate(SynthConfig(seed=3, num_videos_train=6, num_videos_val=1, duration_s=12), data)  # ~60 shards
        reference_params = _write(_params(data, tmp_path / "reference"), tmp_path / "reference")
        reference_store = tmp_path / "reference" / "cache" / "train.zarr"
        t_extract = _run(["extract", "--split", "train"], reference_params, reference_store / "zarr.json")
        reference_views = _views(reference_store)
        # from the first epoch's resume file on: a kill before it only restarts a run that had done nothing
        t_train = _run(["train-head"], reference_params, tmp_path / "reference" / "runs" / "train" / "resume.pt")
        reference_head = _head(tmp_path / "reference" / "runs")

        equal = redone = killed_mid = 0
        for i in range(args.kills if "extract" in args.parts else 0):
            work = tmp_path / f"extract{i}"
            params = _write(_params(data, work), work)
            store = work / "cache" / "train.zarr"
            _killed(["extract", "--split", "train"], params, rng.uniform(0.0, t_extract), store / "zarr.json")
            before = _records(store)
            killed_mid += 0 < len(before) < len(open_store(reference_store).shards)
            _run(["extract", "--split", "train"], params)
            after = _records(store)
            redone += sum(after.get(name) != record for name, record in before.items())
            views = _views(store)
            equal += all(np.array_equal(views[v], reference_views[v]) for v in reference_views)
            shutil.rmtree(work)
        if "extract" in args.parts:
            print(
                f"extract: {equal}/{args.kills} resumed stores equal to the uninterrupted one; "
                f"{redone} shards finished before a kill were written again; {killed_mid} kills landed mid-store"
            )

        heads_equal = resumed = 0
        for i in range(args.kills if "train" in args.parts else 0):
            work = tmp_path / f"train{i}"
            shutil.copytree(tmp_path / "reference" / "cache", work / "cache")
            params = _write(_params(data, work), work)
            _killed(["train-head"], params, rng.uniform(0.0, t_train), work / "runs" / "train" / "resume.pt")
            resumed += (work / "runs" / "train" / "resume.pt").exists()
            _run(["train-head", "--resume"], params)
            head = _head(work / "runs")
            heads_equal += head.keys() == reference_head.keys() and all(
                torch.equal(head[k], reference_head[k]) for k in head
            )
            shutil.rmtree(work)
        if "train" in args.parts:
            print(
                f"train-head: {heads_equal}/{args.kills} heads after --resume equal to the uninterrupted one "
                f"({resumed} kills left a resume file mid-run; the others came after the run had finished)"
            )


if __name__ == "__main__":
    main()
