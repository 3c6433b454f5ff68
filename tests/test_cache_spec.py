"""The cache contract: layout, refusal of mismatched stores, resumability, and the clip-batch reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from cache_spec import store as st
from cache_spec.manifest import ManifestError, validate
from cache_spec.reader import ClipBatchLoader
from cache_spec.testing import fill_store, random_manifest, random_store
from cache_spec.views import BOX_ON_MAP, CLIP_EXTENT, CONTEXT_MAP, ROI_POOLED, get_view


def _create(path, clips, boxes, **overrides):
    kwargs = dict(
        fingerprint={"backbone": "slowfast_small", "scale": 1.0},
        dims={"C": 8, "H": 4, "W": 5},
        views=(ROI_POOLED, CONTEXT_MAP),
        clips=clips,
        boxes=boxes,
        clips_per_shard=8,
    )
    kwargs.update(overrides)
    return st.create_store(path, **kwargs)


def test_view_shapes_resolve_symbolic_dims():
    assert get_view(CONTEXT_MAP).shape({"C": 2304, "H": 16, "W": 20}) == (2304, 16, 20)
    assert get_view("roi_spatial").shape({"C": 3}) == (3, 7, 7)
    with pytest.raises(KeyError, match="needs dimension"):
        get_view(CONTEXT_MAP).shape({"C": 1})
    with pytest.raises(KeyError, match="unknown view"):
        get_view("nope")


def test_manifest_contiguity_is_enforced():
    clips, boxes = random_manifest(20, seed=1)
    validate(clips, boxes)
    broken = clips.copy()
    broken.loc[3, "box_count"] += 1
    with pytest.raises(ManifestError, match="contiguously"):
        validate(broken, boxes)


def test_store_is_zarr_v3_with_few_files_and_round_trips(tmp_path):
    store, full = random_store(tmp_path / "s.zarr", n_clips=50, clips_per_shard=16)
    assert json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())["zarr_format"] == 3
    assert store.num_shards == 4 and store.is_complete()
    for view in (ROI_POOLED, CONTEXT_MAP):
        np.testing.assert_array_equal(store.read_view(view), full[view])
        arr = zarr.open_array(str(tmp_path / "s.zarr" / "views" / view / "00000"), mode="r")
        assert arr.chunks == arr.shape  # one chunk per shard: one file read
    n_files = sum(1 for p in (tmp_path / "s.zarr").rglob("*") if p.is_file())
    assert n_files < 4 * (2 * 2 + 1) + 10


def test_reopen_refuses_other_fingerprint_naming_the_field(tmp_path):
    clips, boxes = random_manifest(20)
    store = _create(tmp_path / "s.zarr", clips, boxes)
    with pytest.raises(st.StoreMismatchError, match=r"scale: store has 1\.0, asked for 2\.0"):
        _create(tmp_path / "s.zarr", clips, boxes, fingerprint={"backbone": "slowfast_small", "scale": 2.0})
    with pytest.raises(st.StoreMismatchError, match="manifest"):
        other_clips, other_boxes = random_manifest(20, seed=5)
        _create(tmp_path / "s.zarr", other_clips, other_boxes)
    with pytest.raises(st.StoreMismatchError, match="backbone"):
        st.open_store(store.path, expected_fingerprint={**store.fingerprint, "backbone": "x"})


def test_reopen_refuses_other_spec_version(tmp_path):
    clips, boxes = random_manifest(10)
    store = _create(tmp_path / "s.zarr", clips, boxes)
    group = zarr.open_group(str(store.path), mode="r+")
    group.attrs["spec_version"] = "0.9"
    with pytest.raises(st.StoreMismatchError, match="spec version '0.9'"):
        st.open_store(store.path)


def test_resume_skips_done_shards_and_rewrites_partial_ones(tmp_path):
    clips, boxes = random_manifest(40, seed=2)
    store = _create(tmp_path / "s.zarr", clips, boxes)
    full = fill_store(store, seed=3)
    # Simulate a kill: shard 2's record vanishes and its array is half-written garbage.
    (store.path / "done" / "00002.json").unlink()
    reopened = _create(tmp_path / "s.zarr", clips, boxes)
    assert reopened.missing_shards() == [2]
    assert any("shard 2" in p for p in reopened.verify())
    with pytest.raises(st.StoreError, match="incomplete"):
        ClipBatchLoader(reopened, [ROI_POOLED])
    rng = reopened.shards[2]
    reopened.write_shard(2, {v: full[v][slice(*rng.rows(get_view(v).rows))] for v in reopened.views})
    assert reopened.verify() == []
    np.testing.assert_array_equal(reopened.read_view(CONTEXT_MAP), full[CONTEXT_MAP])


def test_write_shard_checks_shapes(tmp_path):
    clips, boxes = random_manifest(10)
    store = _create(tmp_path / "s.zarr", clips, boxes)
    with pytest.raises(st.StoreError, match="expected"):
        store.write_shard(0, {ROI_POOLED: np.zeros((1, 8)), CONTEXT_MAP: np.zeros((1, 8, 4, 5))})


@pytest.mark.parametrize("budget", [1 << 40, 0], ids=["in_memory", "streamed"])
def test_loader_yields_whole_clips_once_per_epoch(tmp_path, budget):
    store, full = random_store(tmp_path / "s.zarr", n_clips=70, clips_per_shard=8, seed=4)
    mask = (store.boxes["source"] == "gt").to_numpy()
    loader = ClipBatchLoader(store, [ROI_POOLED, CONTEXT_MAP], batch_clips=5, box_mask=mask, memory_budget_bytes=budget)
    assert loader.in_memory == (budget > 0)
    seen_clips, orders = [], []
    for _ in range(2):
        order, seen_boxes = [], []
        for batch in loader:
            assert len(batch.clip_index) <= 5
            np.testing.assert_array_equal(batch.views[ROI_POOLED], full[ROI_POOLED][batch.box_index])
            np.testing.assert_array_equal(batch.views[CONTEXT_MAP], full[CONTEXT_MAP][batch.clip_index])
            # every selected box of every clip in the batch is there, grouped by its clip
            clip_of = store.boxes["clip_index"].to_numpy()[batch.box_index]
            np.testing.assert_array_equal(clip_of, batch.clip_index[batch.box_clip])
            assert np.all(np.diff(batch.box_clip) >= 0)
            seen_boxes.append(batch.box_index)
            order.extend(batch.clip_index)
        orders.append(order)
        seen_clips.append(sorted(order))
        np.testing.assert_array_equal(np.sort(np.concatenate(seen_boxes)), np.flatnonzero(mask))
    assert seen_clips[0] == seen_clips[1] == sorted(set(store.boxes["clip_index"][mask]))
    assert orders[0] != orders[1]  # reshuffled each epoch


def test_loader_names_missing_view(tmp_path):
    store, _ = random_store(tmp_path / "s.zarr", n_clips=5)
    with pytest.raises(st.StoreError, match=r"lacks view\(s\) \['roi_spatial'\]"):
        ClipBatchLoader(store, ["roi_spatial"])


@pytest.mark.parametrize("budget", [1 << 40, 0], ids=["in_memory", "streamed"])
def test_manifest_views_come_with_every_store(tmp_path, budget):
    store, _ = random_store(tmp_path / "s.zarr", n_clips=30, clips_per_shard=8, seed=6)
    loader = ClipBatchLoader(store, [ROI_POOLED, BOX_ON_MAP, CLIP_EXTENT], batch_clips=4, memory_budget_bytes=budget)
    for batch in loader:
        expected = store.boxes[["fx1", "fy1", "fx2", "fy2"]].to_numpy(np.float32)[batch.box_index]
        np.testing.assert_array_equal(batch.views[BOX_ON_MAP], expected)
        extent = store.clips[["valid_h", "valid_w"]].to_numpy(np.float32)[batch.clip_index]
        np.testing.assert_array_equal(batch.views[CLIP_EXTENT], extent)
    assert BOX_ON_MAP not in store.views  # derived, never stored
