"""A trained head: its checkpoint, its loss, its predictions over a store, and the device it runs on.

Also the atomic writes every stage-two output goes through (:func:`atomic_outputs`), so that a kill mid-save never
leaves a truncated file behind.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from cache_spec.errors import InputError
from cache_spec.reader import ClipBatch, ClipBatchLoader
from cache_spec.store import Store, StoreMismatchError
from cache_spec.views import get_view
from heads import Head, build_head
from stages.data.ava import POSE, LabelMap
from stages.models.losses import ActionLoss

log = logging.getLogger(__name__)

# Store fingerprint fields that may differ between the store a head was trained on and the one it scores:
# which rows a store holds (split, manifest, box sources and their thresholds, keyframe stride), how they are laid
# out (views, dtype, clips_per_shard), test-time variants (scale, flip, and the dims the scale changes) and where
# each row's clip lies in its video (the data set's time offsets; a per-video table would list every video).
# Every other field (backbone, its architecture, weights, clip sampling, decoding from videos or JPEG frames, the
# ava/dense layout) decides what the features mean, so a new fingerprint field is compared unless it is added here.
PER_STORE_FIELDS = frozenset(
    {
        "split",
        "manifest",
        "box_sources",
        "predicted_boxes",
        "det_threshold",
        "label_iou",
        "keyframe_stride",
        "views",
        "dtype",
        "clips_per_shard",
        "scale",
        "flip",
        "dims",
        "time_offset_s",
        "time_offsets",
    }
)
MAX_LISTED = 5  # differing fields named in the refusal
_ABSENT = "<absent>"  # a key one of two nested fingerprint values lacks
RETRAIN_HINT = (
    "re-extract the train split and retrain: `pipeline extract --split train && pipeline train-head` (or `dvc repro`)"
)
RESUME_FILE = "resume.pt"  # train-head's per-epoch checkpoint, beside head.pt; removed once the outputs are written
_HEAD_KEYS = ("head", "options", "dims", "class_ids", "state_dict")


class HeadStoreMismatchError(StoreMismatchError, ValueError):
    """A head and a store that do not go together: features of another backbone, or views the store lacks."""


class HeadCheckpointError(InputError, ValueError):
    """head.pt cannot be used: missing, empty or cut short (an interrupted save or copy), or not a head file."""


class TrainedHead(NamedTuple):
    """A loaded head with what scoring needs, and the id of the training run that wrote it (None: older file)."""

    model: Head
    loss: ActionLoss
    class_ids: list[int]
    run_id: str | None


@contextmanager
def atomic_outputs(*paths: Path, durable: bool = True) -> Iterator[list[Path]]:
    """Temporary paths in each path's folder, renamed over the paths (in order) once the body has written them all.

    A kill or an error while writing leaves the previous files (or none) in place, never a truncated one: the body
    writes only the temporary files, which are removed on an error, and ``os.replace`` within a folder is atomic.
    Renaming the files together, right after each other, keeps outputs of two runs from mixing (but for a kill
    between two renames, which the run id each output records makes detectable). ``durable`` also fsyncs each
    file before its rename, so that a power cut cannot leave the new name on an empty file; a killed process
    needs no fsync (its writes are already in the page cache), so a file rewritten often may skip it.
    """
    targets = [Path(p) for p in paths]
    # The suffix stays last, so writers that pick a format or compression by it (pandas, pyarrow) still do.
    tmps = [t.with_name(f".{t.stem}.{os.getpid()}.tmp{t.suffix}") for t in targets]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmps
        for tmp in tmps if durable else ():
            _fsync(tmp)  # the data is on disk before the name points at it (no 0-byte file after a power cut)
        for tmp, target in zip(tmps, targets, strict=True):
            os.replace(tmp, target)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_output(path: Path, durable: bool = True) -> Iterator[Path]:
    """One temporary path renamed over ``path`` once written; see :func:`atomic_outputs`."""
    with atomic_outputs(path, durable=durable) as (tmp,):
        yield tmp


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def error_summary(error: BaseException, limit: int = 100) -> str:
    """An exception as ``Type: first sentence`` (torch's zip errors go on for a paragraph)."""
    text = " ".join(str(error).split()).split(". ")[0]
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def box_mask(store: Store, source: str) -> np.ndarray:
    """Boolean mask over the store's box rows for ``gt``, ``det`` or ``all``."""
    if source == "all":
        return np.ones(len(store.boxes), bool)
    if source not in ("gt", "det"):
        raise ValueError(f"box source must be gt, det or all, got {source!r}")
    return (store.boxes["source"] == source).to_numpy()


def skip_unknown_labels(
    action_ids: np.ndarray | Sequence[int], known: Collection[int], source: str, label_map: str = "the label map"
) -> np.ndarray:
    """Mask of the ids in ``known``; the others are reported in one warning (count and ids), never dropped silently.

    Training and evaluation both skip ids outside the label map, as the official AVA evaluator does, so a
    label file that trains also evaluates and both say what they left out.
    """
    ids = np.asarray(action_ids, dtype=np.int64).reshape(-1)
    keep = np.isin(ids, np.asarray(list(known), dtype=np.int64))
    if not keep.all():
        unknown, counts = np.unique(ids[~keep], return_counts=True)
        shown = ", ".join(f"{u} ({c}x)" for u, c in zip(unknown[:20], counts[:20], strict=True))
        more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        log.warning(
            "%s: skipping %d of %d labels whose action id is not in %s: ids %s%s "
            "(the official AVA evaluator skips them too)",
            source,
            int((~keep).sum()),
            len(ids),
            label_map,
            shown,
            more,
        )
    return keep


def multi_hot(
    labels: pd.Series,
    class_ids: Sequence[int],
    source: str = "store labels",
    label_map: str = "the label map",
) -> np.ndarray:
    """[n_boxes, n_classes] float32 targets from the manifest's per-box label lists.

    Ids outside ``class_ids`` are skipped with one warning (see :func:`skip_unknown_labels`).
    """
    lengths = np.fromiter((len(ids) for ids in labels), np.int64, count=len(labels))
    flat = np.fromiter((int(a) for ids in labels for a in ids), np.int64, count=int(lengths.sum()))
    owner = np.repeat(np.arange(len(labels)), lengths)
    keep = skip_unknown_labels(flat, class_ids, source, label_map)
    column = {c: i for i, c in enumerate(class_ids)}
    targets = np.zeros((len(labels), len(class_ids)), np.float32)
    targets[owner[keep], np.array([column[int(a)] for a in flat[keep]], np.int64)] = 1.0
    return targets


def require_views(head: str, views: Sequence[str], store: Store, split: str = "<split>") -> None:
    """Refuse a store that lacks a view the head reads, naming the extract command that adds it."""
    missing = [v for v in views if v not in store.views and get_view(v).source == "store"]
    if missing:
        raise HeadStoreMismatchError(
            f"head {head!r} reads view(s) {missing} that store {store.path} lacks (it holds "
            f"{', '.join(store.views)}). Add them with: pipeline extract --split {split} --heads {head}"
        )


def feature_differences(trained: Mapping[str, Any], scored: Mapping[str, Any]) -> list[str]:
    """``field A -> B`` for each fingerprint field that decides what the features mean and differs.

    Only fields both fingerprints have are compared, minus :data:`PER_STORE_FIELDS`. Nested fields (sampling,
    backbone_config) name only their differing keys, and at most :data:`MAX_LISTED` are listed, so the
    message stays one readable line.
    """
    keys = (set(trained) & set(scored)) - PER_STORE_FIELDS
    return listed_differences({k: trained[k] for k in keys}, {k: scored[k] for k in keys})


def listed_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """``field A -> B`` for each (nested) field that differs, at most :data:`MAX_LISTED` named: one readable line."""
    diffs = _differences(a, b, "")
    if len(diffs) > MAX_LISTED:
        diffs = [*diffs[:MAX_LISTED], f"and {len(diffs) - MAX_LISTED} more"]
    return diffs


def _differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str) -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b), key=str):
        x, y = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if _canonical(x) == _canonical(y):
            continue
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            diffs.extend(_differences(x, y, f"{prefix}{key}."))
        else:
            diffs.append(f"{prefix}{key} {_brief(x)} -> {_brief(y)}")
    return diffs


def check_same_features(trained: Mapping[str, Any], store: Store, checkpoint: Path) -> None:
    """Refuse to score a head on features of another backbone, weights or clip sampling than it was trained on.

    Scores of a head on another backbone's features are meaningless yet look like numbers, so this is an error.
    A field only one fingerprint has (a store written before the field existed) cannot be compared: warned.
    """
    scored = store.fingerprint
    one_sided = sorted((set(trained) ^ set(scored)) - PER_STORE_FIELDS)
    if one_sided:
        log.warning(
            "%s: fingerprint field(s) %s not checked: the head's training store or store %s predates them",
            checkpoint,
            ", ".join(one_sided),
            store.path,
        )
    diffs = feature_differences(trained, scored)
    if diffs:
        sides = f"{trained.get('split', 'train')} store -> {scored.get('split', 'scored')} store"
        raise HeadStoreMismatchError(
            f"head {checkpoint} was trained on features that store {store.path} does not hold "
            f"({sides}: {'; '.join(diffs)}); {RETRAIN_HINT}"
        )


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _brief(value: Any, limit: int = 48) -> str:
    """A value as JSON, cut to ``limit`` characters (a whole backbone config would drown the message)."""
    text = value if value is _ABSENT else _canonical(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_tensors(batch: ClipBatch, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    views = {name: torch.from_numpy(array).to(device, non_blocking=True) for name, array in batch.views.items()}
    return views, torch.from_numpy(batch.box_clip).to(device)


def action_loss(kind: str, label_map: LabelMap) -> ActionLoss:
    """The loss for ``kind`` with pose columns taken from the label map's categories."""
    return ActionLoss(kind, [i for i, c in enumerate(label_map.ids) if label_map.categories[c] == POSE])


def read_head_checkpoint(checkpoint: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """head.pt's contents (weights_only: nothing in it is executed), or one line saying why it cannot be used.

    An empty or truncated file (a save or copy that was interrupted) is an input error naming the file and the fix,
    not torch's EOFError, which the CLI would turn into a bare "Aborted.".
    """
    checkpoint = Path(checkpoint)
    interrupted = checkpoint.with_name(RESUME_FILE).exists()
    finish = "finish the interrupted training with `pipeline train-head --resume`, or retrain: `pipeline train-head`"
    if not checkpoint.is_file():
        train = finish if interrupted else "train one: `pipeline train-head` (or `dvc repro`)"
        raise HeadCheckpointError(f"no trained head at {checkpoint}; {train}")
    fix = finish if interrupted else "retrain it: `pipeline train-head` (or `dvc repro`)"
    size = checkpoint.stat().st_size
    if size == 0:
        raise HeadCheckpointError(f"head checkpoint {checkpoint} is empty (0 bytes; its save was cut short): {fix}")
    try:
        state = torch.load(checkpoint, map_location=device, weights_only=True)
    except (EOFError, RuntimeError, OSError, KeyError, ValueError, pickle.UnpicklingError) as error:
        raise HeadCheckpointError(
            f"head checkpoint {checkpoint} is truncated or corrupt "
            f"({size} bytes; torch.load: {error_summary(error)}): {fix}"
        ) from None
    missing = [k for k in _HEAD_KEYS if k not in state] if isinstance(state, dict) else list(_HEAD_KEYS)
    if missing:
        raise HeadCheckpointError(
            f"{checkpoint} is not a head checkpoint written by `pipeline train-head` (it lacks {', '.join(missing)}): "
            f"{fix}"
        )
    return state


def load_head(
    checkpoint: Path, device: torch.device | str = "cpu", store: Store | None = None, split: str = "<split>"
) -> tuple[Head, ActionLoss, list[int]]:
    """A trained head in eval mode, its loss (for scoring) and class ids; see :func:`open_head`."""
    model, loss, class_ids, _ = open_head(checkpoint, device, store, split)
    return model, loss, class_ids


def open_head(
    checkpoint: Path, device: torch.device | str = "cpu", store: Store | None = None, split: str = "<split>"
) -> TrainedHead:
    """A trained head in eval mode, its loss (for scoring), class ids and run id, from one read of the file.

    With ``store`` (the one it is about to score) the head is refused unless the store holds its views and
    features of the backbone, weights and clip sampling it was trained on (``split`` goes into the fix).
    """
    state = read_head_checkpoint(checkpoint, device)
    if store is not None:
        recorded = state.get("store_fingerprint")
        if recorded is None:
            log.warning(
                "%s records no training-store fingerprint (written by an older version): cannot check that "
                "store %s holds features of the same backbone, weights and clip sampling; retrain to enable the check",
                checkpoint,
                store.path,
            )
        else:
            check_same_features(json.loads(recorded), store, checkpoint)
    try:
        model = build_head(state["head"], state["dims"], len(state["class_ids"]), **state["options"])
    except TypeError as err:  # a head whose option names changed since the file was written
        raise ValueError(
            f"{checkpoint}: the {state['head']} head no longer takes the options it was saved with "
            f"({state['options']}): {err}; retrain it (dvc repro, or pipeline train-head)"
        ) from None
    if store is not None:
        require_views(state["head"], model.views, store, split)
    model.load_state_dict(state["state_dict"])
    loss = ActionLoss(state.get("loss", "bce"), state.get("pose_columns", [])).to(device)
    run_id = state.get("run_id")
    return TrainedHead(model.to(device).eval(), loss, [int(c) for c in state["class_ids"]], run_id)


@torch.inference_mode()
def predict(
    model: Head,
    loss: ActionLoss,
    store: Store,
    source: str = "det",
    batch_clips: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Class scores [n_boxes, n_classes] for the store's ``source`` boxes, with their box rows (sorted)."""
    loader = ClipBatchLoader(
        store, model.views, batch_clips=batch_clips, shuffle=False, box_mask=box_mask(store, source)
    )
    rows, scores = [], []
    for batch in loader:
        views, box_clip = to_tensors(batch, torch.device(device))
        scores.append(loss.scores(model(views, box_clip)).float().cpu().numpy())
        rows.append(batch.box_index)
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return np.concatenate(rows), np.concatenate(scores)
