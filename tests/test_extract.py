"""Stage one on real (tiny synthetic) videos: store contents, refusal, interruption and resume, corrupt videos."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cache_spec.reader import ClipBatchLoader
from cache_spec.store import StoreMismatchError, open_store
from cache_spec.views import CONTEXT_MAP, ROI_POOLED, ROI_SPATIAL
from pipeline.config import extract_config
from stages.data.ava import read_annotations
from stages.data.manifest import MissingVideosError
from stages.data.video import ClipsFailedError
from stages.extract import compute_views, extract
from tests.conftest import cut_video


class _Interrupt(Exception):
    pass


class _StopAfter:
    """A tqdm stand-in that interrupts the run after ``n`` progress updates (like Ctrl-C mid-run)."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, *args, **kwargs):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, k: int) -> None:
        self.n -= 1
        if self.n < 0:
            raise _Interrupt


def test_store_holds_every_keyframe_and_box_with_sources(tiny_params, tiny_data):
    config = extract_config(tiny_params, "train")
    summary = extract(config)
    store = open_store(config.out)
    assert store.is_complete() and summary.failed_videos == {}
    gt = read_annotations(tiny_data / "annotations" / "train.csv")
    gt_actors = gt.drop_duplicates(["video_id", "timestamp", "person_id"])
    boxes = store.boxes.merge(store.clips[["clip_index", "video_id", "timestamp"]], on="clip_index")
    assert (boxes["source"] == "gt").sum() == len(gt_actors)
    assert set(boxes["source"]) == {"gt", "det"}
    assert (boxes.loc[boxes["source"] == "det", "score"] >= config.det_threshold).all()
    # every GT actor's labels are carried into the manifest
    merged = boxes[boxes["source"] == "gt"].merge(gt_actors, on=["video_id", "timestamp", "person_id"])
    assert len(merged) == len(gt_actors)
    pooled, context = store.read_view(ROI_POOLED), store.read_view(CONTEXT_MAP)
    assert pooled.shape == (len(store.boxes), store.dims["C"]) and pooled.dtype == np.float16
    assert context.shape == (len(store.clips), store.dims["C"], store.dims["H"], store.dims["W"])
    assert np.isfinite(pooled).all() and pooled.std() > 0
    # 120x160 frames resized to short side 112 are 112x149 on the 128x160 canvas: 7 of 8 map rows, 10 of 10 columns
    assert (store.clips["valid_h"] == 7).all() and (store.clips["valid_w"] == 10).all()
    assert store.dims["H"] == 8 and store.dims["W"] == 10
    assert store.fingerprint["weights"].startswith("random-init")


def test_rois_pool_from_their_own_clip_and_position():
    # Two clips; a hot feature at one map cell of clip 1 only. A box over that cell sees it, the same box on
    # clip 0 and a box elsewhere on clip 1 do not.
    slow = torch.zeros(2, 4, 2, 6, 6)
    fast = torch.zeros(2, 2, 8, 6, 6)
    slow[1, :, :, 4, 1] = 1.0
    rois = torch.tensor([[1, 0, 3, 3, 6], [0, 0, 3, 3, 6], [1, 3, 0, 6, 3]], dtype=torch.float32)  # map cells
    views = compute_views((slow, fast), rois, [ROI_POOLED, ROI_SPATIAL, CONTEXT_MAP])
    assert views[ROI_POOLED].shape == (3, 6)
    assert views[ROI_POOLED][0, :4].min() > 0.5
    assert views[ROI_POOLED][1].abs().max() == 0 and views[ROI_POOLED][2].abs().max() == 0
    assert views[ROI_SPATIAL].shape == (3, 6, 7, 7)
    assert torch.equal(views[CONTEXT_MAP][1, :4, 4, 1], torch.ones(4))


def test_other_configuration_is_refused_naming_the_field(tiny_params):
    config = extract_config(tiny_params, "val")
    extract(config)
    with pytest.raises(StoreMismatchError, match="det_threshold: store has 0.5, asked for 0.7"):
        extract(replace(config, det_threshold=0.7))


def test_interrupted_extraction_resumes_to_the_uninterrupted_result(tiny_params, tmp_path):
    config = extract_config(tiny_params, "train")
    reference = extract(replace(config, out=tmp_path / "reference.zarr"))
    with pytest.raises(_Interrupt):
        extract(config, progress=_StopAfter(3))
    partial = open_store(config.out)
    done = partial.completed_shards()
    assert 0 < len(done) < partial.num_shards  # stopped part-way, finished shards kept
    summary = extract(config)
    assert summary.shards_skipped == len(done)
    assert summary.shards_written == partial.num_shards - len(done)
    resumed, full = open_store(config.out), open_store(reference.store)
    assert resumed.verify() == []
    for view in (ROI_POOLED, CONTEXT_MAP):
        np.testing.assert_array_equal(resumed.read_view(view), full.read_view(view))


def _copy_with_victim(tiny_params: dict, tiny_data: Path, tmp_path: Path) -> Path:
    """A copy of the data set the params point at, and the video of it a test is about to damage."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    tiny_params["paths"]["data"] = str(data)
    return sorted((data / "videos").glob("synth_train_*.mp4"))[1]


def test_corrupt_video_is_recorded_and_the_rest_completes(tiny_params, tiny_data, tmp_path):
    victim = _copy_with_victim(tiny_params, tiny_data, tmp_path)
    victim.write_bytes(victim.read_bytes()[:2000])  # truncated mid-stream
    tiny_params["extract"]["allow_missing"] = True
    config = extract_config(tiny_params, "train")
    summary = extract(config)
    assert list(summary.failed_videos) == [victim.stem]
    store = open_store(config.out)
    assert store.is_complete() and (store.path / "failures.parquet").exists()
    failed = store.failed_clips()
    assert len(failed) > 0 and set(store.clips.loc[failed, "video_id"]) == {victim.stem}
    loader = ClipBatchLoader(store, [ROI_POOLED], shuffle=False)
    seen = np.concatenate([b.clip_index for b in loader])
    assert not np.isin(seen, failed).any() and len(seen) == len(store.clips) - len(failed)


@pytest.mark.slow
def test_sigkilled_extraction_resumes_to_the_uninterrupted_result(tiny_params, tmp_path):
    """A real `kill -9` of `pipeline extract` mid-run: the rerun completes the store and equals a clean run."""
    import subprocess
    import sys
    import time

    from tests.conftest import write_params

    tiny_params["extract"]["clips_per_shard"] = 1
    params = write_params(tiny_params, tmp_path / "params.yaml")
    config = extract_config(tiny_params, "train")
    command = [sys.executable, "-m", "pipeline.cli", "extract", "--split", "train", "--params", str(params)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = config.out / "done"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (done_dir.exists() and any(done_dir.glob("*.json"))):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    partial = open_store(config.out)
    assert 0 < len(partial.completed_shards()) < partial.num_shards
    extract(config)
    reference = extract(replace(config, out=tmp_path / "reference.zarr"))
    resumed, full = open_store(config.out), open_store(reference.store)
    assert resumed.verify() == []
    for view in (ROI_POOLED, CONTEXT_MAP):
        np.testing.assert_array_equal(resumed.read_view(view), full.read_view(view))


def test_flip_and_scale_variants_keep_the_row_order_and_mirror_the_boxes(tiny_params):
    plain = extract_config(tiny_params, "val")
    flipped = extract_config(tiny_params, "val", flip=True)
    scaled = extract_config(tiny_params, "val", scale=1.5)
    assert flipped.out.name == "val@flip.zarr" and scaled.out.name == "val@x1.5.zarr"
    stores = {}
    for config in (plain, flipped, scaled):
        extract(config)
        stores[config.out.name] = open_store(config.out)
    a, f, s = stores["val.zarr"], stores["val@flip.zarr"], stores["val@x1.5.zarr"]
    for other in (f, s):
        for column in ("clip_index", "x1", "y1", "x2", "y2", "source", "score"):
            assert a.boxes[column].equals(other.boxes[column])
    # mirrored on the map: fx1' = valid width - fx2 (149 px for 120x160 frames at short side 112, /16 cells)
    np.testing.assert_allclose(f.boxes["fx1"], 149 / 16 - a.boxes["fx2"], atol=1e-4)
    np.testing.assert_allclose(f.boxes["fy1"], a.boxes["fy1"])
    assert f.fingerprint["flip"] is True and s.fingerprint["scale"] == 1.5
    assert (s.dims["H"], s.dims["W"]) == (12, 16)  # canvas 128x160 x1.5 -> 192x240, rounded up to 32s: 192x256
    assert not np.array_equal(a.read_view(ROI_POOLED), f.read_view(ROI_POOLED))


def test_single_pathway_backbone_fills_the_pathway_free_views(tiny_params):
    tiny_params["backbone"].update(name="csn", options={"depth_layers": [1, 1, 1, 1], "width": 8})
    config = extract_config(tiny_params, "val", heads=["linear"])
    config = replace(config, views=(ROI_POOLED, CONTEXT_MAP, "slow_tpool"))
    extract(config)
    store = open_store(config.out)
    assert store.fingerprint["backbone"] == "csn" and "C_f" not in store.dims
    assert store.dims["C"] == store.dims["C_s"] == 256
    assert store.read_view("slow_tpool").shape == (len(store.clips), 256, 8, 10)
    with pytest.raises(KeyError, match=r"fast_spool.*needs dimension.*C_f"):
        extract(replace(config, out=config.out.with_name("fast.zarr"), views=(ROI_POOLED, "fast_spool")))


def test_extraction_spread_over_dask_workers_equals_one_process(tiny_params, tmp_path):
    """Two worker processes each write their own shards; the store equals a single-process run."""
    from distributed import Client, LocalCluster

    config = extract_config(tiny_params, "val")
    reference = extract(replace(config, out=tmp_path / "reference.zarr"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            summary = extract(config, cluster=client)
    assert summary.shards_written == open_store(config.out).num_shards > 1
    distributed_store, single = open_store(config.out), open_store(reference.store)
    assert distributed_store.verify() == []
    for view in (ROI_POOLED, CONTEXT_MAP):
        np.testing.assert_array_equal(distributed_store.read_view(view), single.read_view(view))


def test_a_missing_video_fails_before_anything_is_written(tiny_params, tiny_data, tmp_path):
    victim = _copy_with_victim(tiny_params, tiny_data, tmp_path)
    victim.rename(victim.with_suffix(".bak"))
    config = extract_config(tiny_params, "train")
    with pytest.raises(MissingVideosError, match=rf"1 of 3 videos cannot be read: .*{victim.stem}.*--allow-missing"):
        extract(config)
    assert not config.out.exists()


def test_failed_clips_leave_their_shards_undone_and_fail_the_run(tiny_params, tiny_data, tmp_path):
    """Nothing silent: without allow_missing the run fails naming the video, and those shards are redone later."""
    victim = _copy_with_victim(tiny_params, tiny_data, tmp_path)
    original = victim.read_bytes()
    cut_video(victim, 0.5)  # the same video cut to its first half second: later keyframes fail
    config = extract_config(tiny_params, "train")
    with pytest.raises(ClipsFailedError, match=rf"clips failed in 1 video.*{victim.stem}.*--allow-missing"):
        extract(config)
    store = open_store(config.out)
    left = store.missing_shards()
    assert left and not store.is_complete()
    victim_shards = store.clips.loc[store.clips["video_id"] == victim.stem, "clip_index"] // store.clips_per_shard
    assert set(victim_shards) == set(left)
    victim.write_bytes(original)  # the user restores the video: the rerun does exactly the undone shards
    summary = extract(config)
    assert summary.shards_written == len(left) and summary.failed_clips == 0 and summary.failed_videos == {}
    assert open_store(config.out).is_complete() and not (config.out / "failures.parquet").exists()


def test_a_wrong_time_offset_fails_every_clip_by_name(tiny_params, tiny_data):
    tiny_params["dataset"] = {"time_offset_s": 900}  # the synthetic videos start at 0 s
    config = extract_config(tiny_params, "val")
    with pytest.raises(
        ClipsFailedError,
        match=r"outside the video's \d+ frames \(with a time offset of 900 s: check dataset.time_offset_s",
    ):
        extract(config)
    assert open_store(config.out).missing_shards() == list(range(open_store(config.out).num_shards))
