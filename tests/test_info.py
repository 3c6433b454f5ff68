"""`pipeline info`: what a store holds, read back from a real (tiny) extraction and checked against the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cache_spec.store import Store, format_info, open_store
from cache_spec.testing import random_store
from pipeline.cli import app
from pipeline.config import extract_config
from stages.extract import extract
from tests.conftest import REPO, write_params

# The README's "Reading a store from Python" example, verbatim: the test fails if the two drift apart.
README_EXAMPLE = """\
from cache_spec.store import open_store

store = open_store("data/cache/train.zarr")  # refuses a store of another spec version
pooled = store.read_view("roi_pooled")  # numpy float16, one row per box: [len(store.boxes), C]
boxes = store.boxes  # pandas, same row order: clip_index, x1..y2, source, score, person_id, labels
gt = pooled[(boxes["source"] == "gt").to_numpy()]  # the ground-truth actors only
"""


def _chunk_file_bytes(store: Store, view: str) -> int:
    """The bytes of a view's chunk files, found independently of the code under test."""
    root = store.path / "views" / view
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and "c" in f.relative_to(root).parts[1:2])


@pytest.fixture()
def train_store(tiny_params: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Store]:
    """The tiny train split extracted to ``data/cache/train.zarr`` below the working directory, as in the README."""
    tiny_params["paths"]["cache"] = str(tmp_path / "data" / "cache")
    monkeypatch.chdir(tmp_path)
    summary = extract(extract_config(tiny_params, "train"))
    return write_params(tiny_params, tmp_path / "params.yaml"), open_store(summary.store)


def test_info_text_and_json_match_the_store_on_disk(train_store: tuple[Path, Store]) -> None:
    params, store = train_store
    runner = CliRunner()
    text = runner.invoke(app, ["info", "--split", "train", "--params", str(params)])
    assert text.exit_code == 0, text.output
    out = text.stdout
    n_gt, n_det = int((store.boxes["source"] == "gt").sum()), int((store.boxes["source"] == "det").sum())
    assert n_gt > 0 and n_det > 0
    assert f"store        {store.path}" in out
    assert f"{len(store.clips)} clips from {store.clips['video_id'].nunique()} videos" in out
    assert f"{len(store.boxes)} boxes ({n_gt} gt, {n_det} det)" in out
    assert f"shards       {store.num_shards}/{store.num_shards} done" in out
    assert "failed       none" in out
    sizes = {view: _chunk_file_bytes(store, view) for view in store.views}
    assert set(store.views) == {"roi_pooled", "context_map"} and all(sizes.values())
    for view in store.views:
        line = next(line for line in out.splitlines() if line.startswith(f"  {view} "))
        shape = "[" + ", ".join(map(str, store.row_shape(view))) + "]"
        assert shape in line and store.dtype in line and f"({sizes[view]:,} B)" in line
    assert f"({sum(sizes.values()):,} B)" in next(line for line in out.splitlines() if line.startswith("  total "))
    assert "fingerprint" in out and f"    C: {store.dims['C']}" in out  # nested: dims indented under their key
    assert f"  manifest: {store.fingerprint['manifest']}" in out

    machine = runner.invoke(app, ["info", "--split", "train", "--json", "--params", str(params)])
    assert machine.exit_code == 0, machine.output
    info = json.loads(machine.stdout)
    assert info == store.info()
    assert info["rows"] == {
        "clips": len(store.clips),
        "videos": int(store.clips["video_id"].nunique()),
        "boxes": len(store.boxes),
        "boxes_by_source": {"gt": n_gt, "det": n_det},
    }
    assert {v["name"]: v["shape"] for v in info["views"]} == {v: list(store.row_shape(v)) for v in store.views}
    assert {v["name"]: v["disk_bytes"] for v in info["views"]} == sizes
    assert {v["name"]: v["memory_bytes"] for v in info["views"]} == {v: store.view_nbytes(v) for v in store.views}
    assert info["disk_bytes"] == sum(sizes.values())
    assert info["shards"] == {"done": store.num_shards, "total": store.num_shards, "missing": []}
    assert info["failed"] == {"videos": 0, "clips": 0, "first": []}
    assert info["fingerprint"] == store.fingerprint and isinstance(info["fingerprint"]["dims"], dict)


def test_the_readme_example_runs_against_a_real_store(train_store: tuple[Path, Store]) -> None:
    _, store = train_store
    assert README_EXAMPLE in (REPO / "README.md").read_text()
    scope: dict = {}
    exec(compile(README_EXAMPLE, "README.md", "exec"), scope)  # in the working directory the fixture set
    assert scope["pooled"].shape == (len(store.boxes), store.dims["C"]) and scope["pooled"].dtype == np.float16
    assert len(scope["gt"]) == int((store.boxes["source"] == "gt").sum()) > 0
    np.testing.assert_array_equal(
        scope["gt"], store.read_view("roi_pooled")[(store.boxes["source"] == "gt").to_numpy()]
    )


def test_info_lists_failed_videos_and_missing_shards(tmp_path: Path) -> None:
    store, _ = random_store(tmp_path / "s.zarr", n_clips=40, channels=4, clips_per_shard=10)
    shard = store.shards[1]
    arrays = {v: store.read_shard(v, 1) for v in store.views}
    store.write_shard(1, arrays, failed_clips=range(shard.clip_start, shard.clip_start + 3))
    videos = [f"bad{i}" for i in range(7)]
    pq.write_table(pa.table({"video_id": videos, "error": ["truncated"] * 7}), store.path / "failures.parquet")
    (store.path / "done" / "00003.json").unlink()
    info = open_store(store.path).info()
    assert info["shards"] == {"done": 3, "total": 4, "missing": [3]}
    assert info["failed"]["videos"] == 7 and info["failed"]["clips"] == 3
    assert [f["video_id"] for f in info["failed"]["first"]] == videos[:5]
    text = format_info(info)
    assert "shards       3/4 done; missing e.g. 3" in text
    assert "failed       7 videos, 3 clips" in text and "  bad0: truncated" in text and "... and 2 more" in text


@pytest.mark.parametrize(
    ("dataset", "name", "hint"), [("ava", "test.zarr", ""), ("dense", "dense_test.zarr", " --dataset dense")]
)
def test_a_missing_store_is_one_line_naming_the_path_and_the_fix(
    tiny_params: dict, tmp_path: Path, dataset: str, name: str, hint: str
) -> None:
    params = write_params(tiny_params, tmp_path / "params.yaml")
    result = CliRunner().invoke(app, ["info", "--split", "test", "--dataset", dataset, "--params", str(params)])
    assert result.exit_code == 2
    path = Path(tiny_params["paths"]["cache"]) / name
    assert result.stderr == f"error: no feature store at {path}; run `pipeline extract --split test{hint}` first\n"
    assert result.stdout == ""
