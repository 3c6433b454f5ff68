"""Stage two: train a head from the cache alone (the backbone is never loaded), and score boxes with it.

Every epoch ends with a resume file beside the outputs (``resume.pt``: model, optimiser, LR schedule, every RNG
state, the loader's epoch and the loss curve so far), so ``pipeline train-head --resume`` continues a killed run
where it stopped and ends with the very head an uninterrupted run writes. Outputs are written atomically and
carry the run's id, so a head and metrics of different runs can be told apart.
"""

from __future__ import annotations

import json
import logging
import pickle
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cache_spec.errors import InputError
from cache_spec.reader import ClipBatchLoader
from cache_spec.store import Store, open_store
from heads import build_head
from stages.data.ava import POSE, LabelMap, read_label_map
from stages.models.trained_head import (
    RESUME_FILE,
    action_loss,
    atomic_output,
    atomic_outputs,
    box_mask,
    error_summary,
    listed_differences,
    multi_hot,
    require_views,
    resolve_device,
    to_tensors,
)

log = logging.getLogger(__name__)

RESUME_FORMAT = 1  # bump when the resume file's layout changes; an older file is refused, naming the fix
START_OVER = "train without --resume (params train.resume: false) to start over"


class ResumeError(InputError, ValueError):
    """The resume file cannot continue this run: unreadable, or made with other params or another store."""


@dataclass(frozen=True)
class TrainConfig:
    """One head-training run: which store, which head with which options, and the optimiser."""

    store: Path
    label_map: Path
    out_dir: Path
    head: str = "linear"
    head_options: Mapping[str, Any] = field(default_factory=dict)  # the head constructor's defaults
    box_source: Literal["gt", "det", "all"] = "gt"  # det: detections labelled by IoU
    loss: Literal["bce", "pose_softmax"] = "bce"  # pose_softmax: softmax over pose classes, sigmoid for the rest
    epochs: int = 30
    batch_clips: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    memory_budget_mb: int = 2048
    resume: bool = False  # continue from out_dir/resume.pt when there is one (else start at epoch 0)

    def __post_init__(self) -> None:
        """Refuse counts that would write a head nobody trained (0 epochs) or never yield a batch."""
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs} (0 epochs would write an untrained head)")
        if self.batch_clips < 1:
            raise ValueError(f"batch_clips must be at least 1, got {self.batch_clips}")


@dataclass
class TrainResult:
    checkpoint: Path
    final_loss: float
    boxes_per_second: float
    seconds: float
    run_id: str = ""
    resumed_at_epoch: int = 0  # epochs done before this process started (0: a fresh run)


def new_run_id() -> str:
    """A run id that sorts by start time and is unique across processes and machines."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def run_fingerprint(config: TrainConfig, store: Store, label_map: LabelMap, device: torch.device) -> dict[str, Any]:
    """Everything that decides the trained weights, as plain JSON values: a resume is refused if any differs.

    The output folder and the store's path are left out (moving them changes nothing); the label map counts by
    its classes, not its path.
    """
    fingerprint = {
        "head": config.head,
        "head_options": dict(config.head_options),
        "box_source": config.box_source,
        "loss": config.loss,
        "epochs": config.epochs,  # the LR schedule spans all epochs, so even "more epochs" is another run
        "batch_clips": config.batch_clips,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "seed": config.seed,
        "memory_budget_mb": config.memory_budget_mb,  # in memory or streamed: another batch order
        "device": device.type,
        "class_ids": list(label_map.ids),
        "pose_classes": [c for c in label_map.ids if label_map.categories[c] == POSE],
        "store": store.fingerprint,
    }
    normalised: dict[str, Any] = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    return normalised


def train(config: TrainConfig, progress: Callable[..., Any] = tqdm) -> TrainResult:
    """Train ``config.head`` on one store; writes ``head.pt``, ``metrics.json`` and ``curve.tsv`` atomically.

    With ``config.resume`` and a resume file from a run of the same fingerprint, training continues after that
    file's epoch with its model, optimiser, schedule and RNG states, so the result equals an uninterrupted run.
    """
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    store = open_store(config.store)
    label_map = read_label_map(config.label_map)
    class_ids = label_map.ids
    model = build_head(config.head, store.dims, len(class_ids), **dict(config.head_options)).to(device)
    require_views(config.head, model.views, store)
    trained = box_mask(store, config.box_source)
    loader = ClipBatchLoader(
        store,
        model.views,
        batch_clips=config.batch_clips,
        seed=config.seed,
        box_mask=trained,
        memory_budget_bytes=config.memory_budget_mb << 20,
    )
    if loader.num_boxes == 0:
        raise ValueError(f"store {store.path} has no {config.box_source!r} boxes to train on")
    # labels outside the label map are skipped with one warning (counted over the boxes trained on), as evaluate
    # skips them in the ground truth
    targets_np = np.zeros((len(store.boxes), len(class_ids)), np.float32)
    source = f"store {store.path} ({config.box_source} boxes)"
    targets_np[trained] = multi_hot(store.boxes["labels"][trained], class_ids, source, str(config.label_map))
    targets = torch.from_numpy(targets_np)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs * len(loader))
    loss_fn = action_loss(config.loss, label_map).to(device)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = run_fingerprint(config, store, label_map, device)
    resume_path = config.out_dir / RESUME_FILE

    curve: list[dict[str, Any]] = []
    run_id, done, seconds_before = new_run_id(), 0, 0.0
    state = load_resume(resume_path, fingerprint) if config.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        loader._epoch = int(state["loader_epoch"])  # the loader seeds each epoch's shuffle by (seed, epoch)
        set_rng_states(state["rng"], device)
        curve, run_id, done = list(state["curve"]), str(state["run_id"]), int(state["epoch"])
        seconds_before = float(state["seconds"])
        log.info("resuming run %s after epoch %d of %d from %s", run_id, done, config.epochs, resume_path)
        if state.get("threads") != torch.get_num_threads():  # CPU sums are split by thread: other roundings
            log.warning(
                "resuming with %d torch threads where the run had %s: the head will not be bit for bit that of an "
                "uninterrupted run",
                torch.get_num_threads(),
                state.get("threads"),
            )
    elif resume_path.exists():
        log.info("%s holds an interrupted run; it is replaced (train-head --resume would continue it)", resume_path)
    resumed_at, saved = done, done

    start = time.perf_counter()
    model.train()
    try:
        epochs = range(done, config.epochs)
        for epoch in progress(epochs, desc=f"train {config.head}", unit="epoch", initial=done, total=config.epochs):
            total, n = 0.0, 0
            for batch in loader:
                views, box_clip = to_tensors(batch, device)
                logits = model(views, box_clip)
                loss = loss_fn(logits, targets[batch.box_index].to(device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                total += loss.item() * batch.num_boxes
                n += batch.num_boxes
            curve.append({"epoch": epoch + 1, "loss": total / n, "lr": schedule.get_last_lr()[0]})
            log.debug("epoch %d loss %.4f", epoch + 1, total / n)
            record = {
                "format": RESUME_FORMAT,
                "run_id": run_id,
                "fingerprint": json.dumps(fingerprint, sort_keys=True),
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "schedule": schedule.state_dict(),
                "loader_epoch": loader._epoch,
                "rng": rng_states(device),
                "threads": torch.get_num_threads(),
                "curve": curve,
                "seconds": seconds_before + time.perf_counter() - start,
            }
            save_resume(resume_path, record)
            saved = epoch + 1
        seconds = seconds_before + time.perf_counter() - start
        result = TrainResult(
            config.out_dir / "head.pt",
            curve[-1]["loss"],
            loader.num_boxes * config.epochs / max(seconds, 1e-9),
            seconds,
            run_id,
            resumed_at,
        )
        metrics = {
            "final_loss": result.final_loss,
            "epochs": config.epochs,
            "train_boxes": loader.num_boxes,
            "boxes_per_second": result.boxes_per_second,
            "seconds": seconds,
            "run_id": run_id,
        }
        head = head_record(config, store, label_map, model.state_dict(), run_id)
        write_outputs(config.out_dir, head, pd.DataFrame(curve).assign(run_id=run_id), metrics)
    except BaseException:
        if saved:  # Ctrl-C, an error, a full disk: say how to go on (a SIGKILL says nothing, but resumes alike)
            log.warning(
                "training stopped after epoch %d of %d; rerun with --resume (params train.resume: true) to continue "
                "from %s",
                saved,
                config.epochs,
                resume_path,
            )
        raise
    resume_path.unlink(missing_ok=True)  # last: a kill before this leaves a resume that rewrites the same outputs
    log.info("run %s: %s, metrics.json and curve.tsv written", run_id, result.checkpoint)
    return result


def head_record(
    config: TrainConfig, store: Store, label_map: LabelMap, state_dict: Mapping[str, torch.Tensor], run_id: str
) -> dict[str, Any]:
    """head.pt's contents: what load_head rebuilds the head from, and the run that trained it."""
    class_ids = label_map.ids
    return {
        "head": config.head,
        "options": dict(config.head_options),
        "dims": dict(store.dims),
        "class_ids": list(class_ids),
        "loss": config.loss,
        "pose_columns": [i for i, c in enumerate(class_ids) if label_map.categories[c] == POSE],
        # evaluate refuses a store whose backbone, weights or clip sampling differ from these
        "store_fingerprint": json.dumps(store.fingerprint, sort_keys=True, default=str),
        "state_dict": dict(state_dict),
        "run_id": run_id,  # the same in metrics.json and curve.tsv: outputs of different runs are detectable
        "epochs": config.epochs,
    }


def write_outputs(out_dir: Path, head: Mapping[str, Any], curve: pd.DataFrame, metrics: Mapping[str, Any]) -> None:
    """head.pt, curve.tsv and metrics.json: all written to temporary files first, then renamed one after another."""
    paths = (out_dir / "head.pt", out_dir / "curve.tsv", out_dir / "metrics.json")
    with atomic_outputs(*paths) as (head_tmp, curve_tmp, metrics_tmp):
        torch.save(dict(head), head_tmp)
        curve.to_csv(curve_tmp, sep="\t", index=False)
        metrics_tmp.write_text(json.dumps(metrics, indent=2) + "\n")


def save_resume(path: Path, state: Mapping[str, Any]) -> None:
    """The resume file, replaced atomically: a kill mid-save keeps the previous epoch's.

    Not fsynced: that costs more than a small head's epoch, and a file a power cut left unreadable is refused in
    one line by :func:`load_resume` (the run then starts over), never resumed from.
    """
    with atomic_output(path, durable=False) as tmp:
        torch.save(dict(state), tmp)


def load_resume(path: Path, fingerprint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The resume file's state, or None when there is none (the run starts at epoch 0).

    Read with weights_only (tensors and plain containers only). A file of another format, params or store is
    refused in one line naming what differs, since continuing it would train a head no single config describes.
    """
    if not path.exists():
        log.warning("--resume: no resume file at %s (nothing was interrupted); training from epoch 0", path)
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, OSError, KeyError, ValueError, pickle.UnpicklingError) as error:
        reason = error_summary(error)
        raise ResumeError(f"resume file {path} cannot be read ({reason}); delete it, or {START_OVER}") from None
    found = state.get("format") if isinstance(state, dict) else None
    if found != RESUME_FORMAT:
        raise ResumeError(f"resume file {path} has format {found!r}, this version reads {RESUME_FORMAT}; {START_OVER}")
    diffs = listed_differences(json.loads(state["fingerprint"]), fingerprint)
    if diffs:
        raise ResumeError(
            f"cannot resume from {path}: it was made with other settings (resume file -> now: {'; '.join(diffs)}); "
            f"restore them, or {START_OVER}"
        )
    return state


def rng_states(device: torch.device) -> dict[str, Any]:
    """Every random state a run can draw from (torch, CUDA, numpy's and Python's global ones), as tensors.

    The loader's shuffles come from their own generator, seeded by (seed, epoch), so its epoch is saved instead.
    Plain tensors and ints keep the file loadable with weights_only.
    """
    np_state = np.random.get_state(legacy=False)
    assert isinstance(np_state, dict)
    py_version, py_state, py_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any], device: torch.device) -> None:
    """Put back what :func:`rng_states` saved."""
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    python = states["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
