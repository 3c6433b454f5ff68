"""Stage one: run the backbone once over every keyframe clip and write the cache views of its boxes.

Work is done shard by shard (a shard is a run of clips, see ``cache_spec.store``): a background thread decodes
and preprocesses clips while the main thread runs the backbone, and a writer thread writes each finished
shard in one go, so decoding, the forward pass and writing overlap. Shards that already have a completion
record are skipped, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.nn import functional as F
from torchvision.ops import roi_align
from tqdm import tqdm

from cache_spec import views as V
from cache_spec.store import Store, create_store, lock_store, open_store
from stages.data.layout import DataLayout
from stages.data.manifest import ManifestSpec, build_manifest
from stages.data.video import ClipSampling, ClipsFailedError, VideoSource, decode_clips, in_background
from stages.models.backbones import BackboneConfig, VideoBackbone, check_clip_size, load_backbone, pool_context

log = logging.getLogger(__name__)

DEFAULT_VIEWS = (V.ROI_POOLED, V.CONTEXT_MAP)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides the numbers in a store (it all enters the fingerprint) plus how to run."""

    data: DataLayout
    split: str
    out: Path
    dataset: Literal["ava", "dense"] = "ava"  # ava: keyframes are AVA seconds | dense: frames of an ACT/MOC pickle
    keyframe_stride: int = 1  # dense only: every k-th frame is a keyframe
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    sampling: ClipSampling = field(default_factory=ClipSampling)
    scale: float = 1.0  # test-time variant: input resolution x scale (short side and canvas)
    flip: bool = False  # test-time variant: frames mirrored; boxes mirrored on the canvas, manifest rows unchanged
    views: tuple[str, ...] = DEFAULT_VIEWS
    box_sources: tuple[Literal["gt", "det"], ...] = ("gt", "det")
    predicted_boxes: Path | None = None  # detector CSV (default: the layout's predicted_boxes for the split)
    det_threshold: float = 0.5
    label_iou: float = 0.5  # a detection takes the labels of the GT box it overlaps at least this much
    dtype: Literal["float16", "float32"] = "float16"
    clips_per_shard: int = 128
    batch_clips: int = 8
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    allow_missing: bool = False  # accept failed clips (zeros, listed) instead of leaving their shards to redo

    @property
    def timestamp_unit(self) -> str:
        """What the manifest's ``timestamp`` counts: AVA seconds, or 1-based frames for dense data sets."""
        return "frames" if self.dataset == "dense" else "seconds"

    @property
    def manifest(self) -> ManifestSpec:
        """The part of the config that decides the store's rows."""
        return ManifestSpec(
            layout=self.data,
            split=self.split,
            dataset=self.dataset,
            keyframe_stride=self.keyframe_stride,
            box_sources=self.box_sources,
            predicted_boxes=self.predicted_boxes,
            det_threshold=self.det_threshold,
            label_iou=self.label_iou,
        )

    @property
    def input_sampling(self) -> ClipSampling:
        """The clip sampling with the variant's scale applied (canvas rounded up to the backbone's 32 multiple)."""
        if self.scale == 1.0:
            return self.sampling
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        height, width = (int(32 * np.ceil(c * self.scale / 32)) for c in self.sampling.canvas)
        return replace(self.sampling, short_side=round(self.sampling.short_side * self.scale), canvas=(height, width))


# ---- the backbone ---------------------------------------------------------------------------------------------
def store_dims(backbone: VideoBackbone, sampling: ClipSampling) -> dict[str, int]:
    """The symbolic dimensions of the views: C over all pathways; C_s/T_s pathway 0; C_f/T_f pathway 1."""
    channels, strides = backbone.pathway_channels, backbone.temporal_strides
    dims = {
        "C": sum(channels),
        "H": sampling.canvas[0] // backbone.stride,
        "W": sampling.canvas[1] // backbone.stride,
        "C_s": channels[0],
        "T_s": sampling.num_frames // strides[0],
    }
    if len(channels) > 1:
        dims.update(C_f=channels[1], T_f=sampling.num_frames // strides[1])
    return dims


def fingerprint(config: ExtractConfig, weights: str) -> dict[str, Any]:
    """The fields that change a store's numbers; a reader asking for another value is refused."""
    return {
        "split": config.split,
        "dataset": config.dataset,
        "keyframe_stride": config.keyframe_stride,
        "backbone": config.backbone.name,
        "backbone_config": config.backbone.architecture(),
        "weights": weights,
        "sampling": asdict(config.sampling),
        "scale": config.scale,
        "flip": config.flip,
        "box_sources": list(config.box_sources),
        "predicted_boxes": str(config.predicted_boxes or "data_dir"),
        "frames": config.data.frames is not None,  # JPEG frame folders decode to other pixels than videos
        "time_offset_s": config.data.time_offset_s,
        "time_offsets": config.data.offsets_digest(),
        "det_threshold": config.det_threshold,
        "label_iou": config.label_iou,
    }


# ---- computing views ------------------------------------------------------------------------------------------
def compute_views(maps: Sequence[torch.Tensor], rois: torch.Tensor, views: Iterable[str]) -> dict[str, torch.Tensor]:
    """All requested views of one batch from the per-pathway maps [B, C_p, T_p, H, W].

    ``rois`` is [N, 5]: (clip in batch, x1, y1, x2, y2) in feature-map cells. "slow" views read pathway 0 and
    "fast" views pathway 1 (a single-pathway backbone has no fast views).
    """
    context = pool_context(maps)
    out: dict[str, torch.Tensor] = {}
    spatial = None
    for view in views:
        if view in (V.FAST_SPOOL, V.FAST_FULL) and len(maps) < 2:
            raise ValueError(f"view {view!r} needs a second (fast) pathway; this backbone has one")
        if view in (V.ROI_POOLED, V.ROI_SPATIAL):
            if spatial is None:
                spatial = _roi_align(context, rois, 7)
            out[view] = spatial.amax(dim=(2, 3)) if view == V.ROI_POOLED else spatial
        elif view == V.CONTEXT_MAP:
            out[view] = context
        elif view == V.CONTEXT_EXT:
            out[view] = _roi_align(context, _enlarge(rois, 2.0), 9)
        elif view == V.ROI_TEMPORAL:
            t_s = maps[0].shape[2]
            per_t = torch.cat([F.adaptive_avg_pool3d(m, (t_s, *m.shape[-2:])) for m in maps], dim=1)
            frames = per_t.permute(0, 2, 1, 3, 4).reshape(-1, per_t.shape[1], *per_t.shape[-2:])  # [B*T_s, C, H, W]
            frame_rois = rois.repeat_interleave(t_s, dim=0).clone()
            frame_rois[:, 0] = frame_rois[:, 0] * t_s + torch.arange(t_s, dtype=rois.dtype).repeat(len(rois))
            pooled = _roi_align(frames, frame_rois, 7).amax(dim=(2, 3))
            out[view] = pooled.reshape(len(rois), t_s, -1).permute(0, 2, 1)
        elif view == V.SLOW_TPOOL:
            out[view] = maps[0].mean(dim=2)
        elif view == V.FAST_SPOOL:
            out[view] = maps[1].mean(dim=(3, 4))
        elif view == V.SLOW_FULL:
            out[view] = maps[0]
        elif view == V.FAST_FULL:
            out[view] = maps[1]
        else:
            raise KeyError(f"extraction cannot compute view {view!r}")
    return out


def _roi_align(x: torch.Tensor, rois: torch.Tensor, size: int) -> torch.Tensor:
    """SlowFast's RoIAlign convention (aligned, adaptive sampling); ``rois`` already in map cells."""
    return roi_align(x, rois, size, spatial_scale=1.0, sampling_ratio=0, aligned=True)


def _enlarge(rois: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale each box about its centre (PCCA's context box is the actor box enlarged 2x)."""
    centre = (rois[:, 1:3] + rois[:, 3:5]) / 2
    half = (rois[:, 3:5] - rois[:, 1:3]) * factor / 2
    return torch.cat([rois[:, :1], centre - half, centre + half], dim=1)


# ---- the run --------------------------------------------------------------------------------------------------
@dataclass
class _Clip:
    shard: int
    clip_index: int
    tensor: torch.Tensor | None  # None: the video failed to decode
    error: str = ""


def _decode_shards(
    store: Store, shards: list[int], videos: Callable[[str], VideoSource], sampling: ClipSampling, flip: bool, unit: str
) -> Iterator[_Clip]:
    for shard in shards:
        rng = store.shards[shard]
        part = store.clips.iloc[rng.clip_start : rng.clip_stop]
        for index, tensor, error in decode_clips(part, videos, sampling, flip, unit):
            yield _Clip(shard, index, tensor, error)


@dataclass
class ExtractSummary:
    store: Path
    clips: int
    boxes: int
    shards_written: int
    shards_skipped: int
    failed_videos: dict[str, str]
    failed_clips: int = 0  # over the whole store: accepted (allow_missing) or in shards left to redo
    shards_left: int = 0  # shards not marked done because clips failed in them


class _Failures(NamedTuple):
    videos: dict[str, str]  # video id -> first error
    clips: int  # failed clips in the shards this run did
    shards_left: int  # of those shards, how many were left undone (allow_missing off)


def extract(config: ExtractConfig, progress: Callable[..., Any] = tqdm, cluster: Any = None) -> ExtractSummary:
    """Build (or finish) the store for one split. Idempotent: finished shards are never redone.

    With ``cluster`` (a ``dask.distributed.Client``) the missing shards are spread over its workers, each
    loading the backbone once and writing whole shards (a shard has exactly one writer); otherwise this
    process does them all. One extraction per store: this process holds the store's lock from before the store
    is created to the last write (a second run is refused, naming the holder); dask workers write under it.
    """
    with lock_store(config.out):
        return _extract_locked(config, progress, cluster)


def _extract_locked(config: ExtractConfig, progress: Callable[..., Any], cluster: Any) -> ExtractSummary:
    """:func:`extract` under the store's lock."""
    model, weights = _prepared_backbone(config)
    clips, boxes = build_manifest(
        config.manifest, config.input_sampling, config.backbone.stride, config.flip, config.allow_missing
    )
    store = create_store(
        config.out,
        fingerprint=fingerprint(config, weights),
        dims=store_dims(model, config.input_sampling),
        views=[v for v in config.views if V.get_view(v).source == "store"],  # manifest views come with every store
        clips=clips,
        boxes=boxes,
        clips_per_shard=config.clips_per_shard,
        dtype=config.dtype,
    )
    todo = store.missing_shards()
    skipped = store.num_shards - len(todo)
    if skipped:
        log.info("%s: %d of %d shards already done, %d to go", store.path, skipped, store.num_shards, len(todo))
    if cluster is None:
        failures = extract_shards(config, store, model, todo, progress)
    else:
        del model  # each worker loads its own
        failures = _extract_on_cluster(config, todo, cluster, progress)
    videos = _record_failures(store, failures.videos)
    failed_clips = len(store.failed_clips()) + (failures.clips if failures.shards_left else 0)
    summary = ExtractSummary(
        store.path,
        len(store.clips),
        len(store.boxes),
        len(todo) - failures.shards_left,
        skipped,
        videos,
        failed_clips,
        failures.shards_left,
    )
    if videos:
        first = "; ".join(f"{v}: {e}" for v, e in list(videos.items())[:3])
        what = (
            f"{failed_clips} of {len(store.clips)} clips failed in {len(videos)} video(s), listed in "
            f"{store.path / 'failures.parquet'} (first: {first})"
        )
        if not config.allow_missing:
            raise ClipsFailedError(
                f"{what}; {failures.shards_left} shard(s) left undone. Fix or add the videos (or the time offset) "
                "and rerun to finish them, or accept the loss with --allow-missing (extract.allow_missing)"
            )
        log.warning("%s; accepted (allow_missing): their features are zeros and readers skip them", what)
    return summary


def _record_failures(store: Store, new: dict[str, str]) -> dict[str, str]:
    """The store's ``failures.parquet``: this run's failed videos plus earlier ones whose clips are still failed.

    A resume keeps the errors of accepted failures; a video that was fixed and redone leaves the table.
    """
    path = store.path / "failures.parquet"
    old = pq.read_table(path).to_pydict() if path.exists() else {"video_id": [], "error": []}
    still = set(store.clips["video_id"].to_numpy()[store.failed_clips()].tolist()) | set(new)
    merged = {v: e for v, e in zip(old["video_id"], old["error"], strict=True) if v in still} | new
    if merged:
        pq.write_table(pa.table({"video_id": list(merged), "error": list(merged.values())}), path)
    elif path.exists():
        path.unlink()
    return merged


def _prepared_backbone(config: ExtractConfig) -> tuple[VideoBackbone, str]:
    if config.threads:
        torch.set_num_threads(config.threads)
    model, weights = load_backbone(config.backbone)
    if model.stride != config.backbone.stride:
        raise ValueError(
            f"backbone {config.backbone.name} has stride {model.stride}, expected {config.backbone.stride}"
        )
    check_clip_size(model, config.input_sampling.num_frames, *config.input_sampling.canvas)
    return model, weights


def extract_shards(
    config: ExtractConfig,
    store: Store,
    model: VideoBackbone,
    shards: Sequence[int],
    progress: Callable[..., Any] = tqdm,
) -> _Failures:
    """Decode, run and write the given shards of an existing store; returns what failed.

    A shard with failed clips is written and marked done only with ``allow_missing``; otherwise it is left for a
    rerun (after the videos are fixed), so a store is never marked complete while clips are missing.
    """
    failures: dict[str, str] = {}
    failed_clips, left = 0, 0
    clip_video = store.clips["video_id"].to_numpy()
    n_todo = sum(store.shards[s].clip_stop - store.shards[s].clip_start for s in shards)
    clip_stream = in_background(
        _decode_shards(
            store,
            list(shards),
            config.data.video,
            config.input_sampling,
            config.flip,
            config.timestamp_unit,
        ),
        maxsize=2 * config.batch_clips,
    )
    pending: list[Future] = []
    write_failed = threading.Event()

    def write(shard: int, buf: _ShardBuffer) -> None:
        """On the writer thread. After a failed write (disk full) nothing more is written and the run stops."""
        if write_failed.is_set():
            return
        try:
            store.write_shard(shard, buf.arrays, buf.failed)
        except BaseException:
            write_failed.set()
            raise

    with (
        ThreadPoolExecutor(max_workers=1) as writer,
        progress(total=n_todo, unit="clip", desc=f"extract {config.split}") as bar,
    ):
        run_batch = _BatchRunner(model, store)
        batch: list[_Clip] = []
        for clip in _with_end_markers(clip_stream):
            if write_failed.is_set():
                break  # the failed write's error is raised below, before another batch is computed
            if clip is not None:
                if clip.tensor is None:
                    failures[str(clip_video[clip.clip_index])] = clip.error
                batch.append(clip)
            if batch and (clip is None or len(batch) == config.batch_clips):
                run_batch(batch)
                bar.update(len(batch))
                batch = []
            for shard, buf in run_batch.finished_shards():
                failed_clips += len(buf.failed)
                if buf.failed and not config.allow_missing:
                    left += 1
                    continue
                pending.append(writer.submit(write, shard, buf))
        for future in pending:
            future.result()
    return _Failures(failures, failed_clips, left)


def _worker_task(config: ExtractConfig, shards: list[int]) -> _Failures:
    """One dask task: this worker's shards of the (already created) store."""
    model, _ = _prepared_backbone(config)
    return extract_shards(config, open_store(config.out), model, shards, progress=silent_progress)


def _extract_on_cluster(
    config: ExtractConfig, shards: Sequence[int], client: Any, progress: Callable[..., Any]
) -> _Failures:
    """Spread shards round-robin over the cluster's workers: one task per worker, so one model load each."""
    from distributed import as_completed

    workers = max(1, len(client.scheduler_info()["workers"]))
    groups = [list(shards[i::workers]) for i in range(workers) if shards[i::workers]]
    futures = {client.submit(_worker_task, config, group, pure=False): len(group) for group in groups}
    videos: dict[str, str] = {}
    clips, left = 0, 0
    with progress(total=len(shards), unit="shard", desc=f"extract {config.split} on {workers} workers") as bar:
        for future in as_completed(futures):
            part = future.result()
            videos.update(part.videos)
            clips, left = clips + part.clips, left + part.shards_left
            bar.update(futures[future])
    return _Failures(videos, clips, left)


class silent_progress:  # noqa: N801 - a tqdm stand-in, called like the class it replaces
    """Progress that prints nothing: for workers (their bars would interleave) and for timing runs."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __enter__(self) -> silent_progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int) -> None:
        pass


def _with_end_markers(clips: Iterator[_Clip]) -> Iterator[_Clip | None]:
    """Insert None whenever the shard changes (and at the end), so batches never span two shards."""
    current = None
    for clip in clips:
        if current is not None and clip.shard != current:
            yield None
        current = clip.shard
        yield clip
    yield None


class _ShardBuffer:
    """The arrays of one shard being filled clip by clip."""

    def __init__(self, store: Store, shard: int):
        self.range = store.shards[shard]
        self.arrays = {}
        for view in store.views:
            lo, hi = self.range.rows(V.get_view(view).rows)
            self.arrays[view] = np.zeros((hi - lo, *store.row_shape(view)), dtype=store.dtype)
        self.remaining = self.range.clip_stop - self.range.clip_start
        self.failed: list[int] = []

    @property
    def complete(self) -> bool:
        return self.remaining == 0


class _BatchRunner:
    """Runs the backbone on a batch of clips and files each view's rows into its shard's buffer."""

    def __init__(self, model: VideoBackbone, store: Store):
        self.model, self.store = model, store
        self.box_start = store.clips["box_start"].to_numpy()
        self.box_count = store.clips["box_count"].to_numpy()
        self.map_boxes = store.boxes[["fx1", "fy1", "fx2", "fy2"]].to_numpy(np.float32)
        self.buffers: dict[int, _ShardBuffer] = {}

    @torch.inference_mode()
    def __call__(self, batch: list[_Clip]) -> None:
        shard = batch[0].shard
        buf = self.buffers.setdefault(shard, _ShardBuffer(self.store, shard))
        buf.remaining -= len(batch)
        buf.failed.extend(c.clip_index for c in batch if c.tensor is None)
        good = [c for c in batch if c.tensor is not None]
        if not good:
            return
        index = np.array([c.clip_index for c in good])
        counts = self.box_count[index]
        box_rows = np.concatenate([np.arange(s, s + n) for s, n in zip(self.box_start[index], counts, strict=True)])
        owner = torch.from_numpy(np.repeat(np.arange(len(good)), counts).astype(np.float32))
        rois = torch.cat([owner[:, None], torch.from_numpy(self.map_boxes[box_rows])], dim=1)
        clips = torch.stack([c.tensor for c in good if c.tensor is not None])
        computed = compute_views(self.model(clips), rois, self.store.views)
        for view, values in computed.items():
            by_clip = V.get_view(view).rows == "clips"
            rows = index - buf.range.clip_start if by_clip else box_rows - buf.range.box_start
            buf.arrays[view][rows] = values.float().numpy()

    def finished_shards(self) -> list[tuple[int, _ShardBuffer]]:
        done = [s for s, buf in self.buffers.items() if buf.complete]
        return [(s, self.buffers.pop(s)) for s in done]
