"""HDF5 feature files: import another extractor's features into a store, train and evaluate on them, export a store.

The features come from a tiny extracted store, written to HDF5 in shuffled row order as another tool would: the
imported store must hold the very same views and manifest, and train-head/evaluate must give the same numbers.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cache_spec.errors import InputError
from cache_spec.store import Store, open_store
from cache_spec.views import BOX_ON_MAP, CONTEXT_MAP, ROI_POOLED, manifest_view
from pipeline.cli import app, run
from pipeline.config import evaluate_config, extract_config, import_config, train_config
from stages.data.manifest import build_manifest
from stages.evaluate import evaluate
from stages.extract import extract
from stages.import_features import ImportRefusedError, import_features
from stages.models.trained_head import HeadStoreMismatchError
from stages.train import train
from tests.conftest import write_params

EXTRACTOR = "test-extractor: slowfast small, random init"


def _write_h5(path: Path, datasets: dict[str, np.ndarray], attrs: dict[str, Any] | None = None) -> Path:
    """Write datasets as another tool would: strings as variable-length UTF-8, everything else as given."""
    with h5py.File(path, "w") as f:
        f.attrs.update(attrs or {})
        for name, values in datasets.items():
            values = np.asarray(values)
            kind = h5py.string_dtype() if values.dtype == object else values.dtype
            f.create_dataset(name, data=values, dtype=kind)
    return path


def _store_datasets(store: Store, seed: int, clip_views: bool = True) -> dict[str, np.ndarray]:
    """A store's keys and views in the HDF5 layout, box rows and clip rows each in a shuffled order."""
    rng = np.random.default_rng(seed)
    clip_of_box = store.boxes["clip_index"].to_numpy()
    box_order = rng.permutation(len(store.boxes))
    clip_order = rng.permutation(len(store.clips))
    video = store.clips["video_id"].to_numpy().astype(object)
    stamp = store.clips["timestamp"].to_numpy()
    out = {
        "video_id": video[clip_of_box][box_order],
        "timestamp": stamp[clip_of_box][box_order].astype(np.float64),  # another tool's float seconds
        "box": store.boxes[["x1", "y1", "x2", "y2"]].to_numpy(np.float32)[box_order],
        "features/roi_pooled": store.read_view(ROI_POOLED).astype(np.float32)[box_order],
    }
    if clip_views:
        out.update(
            {
                "clips/video_id": video[clip_order],
                "clips/timestamp": stamp[clip_order],
                "clips/features/context_map": store.read_view(CONTEXT_MAP)[clip_order],
            }
        )
    return out


def _imported_params(params: dict, tmp_path: Path) -> dict:
    other = copy.deepcopy(params)
    other["paths"].update(cache=str(tmp_path / "imported_cache"), runs=str(tmp_path / "imported_runs"))
    return other


@pytest.fixture()
def extracted(tiny_params: dict) -> dict:
    for split in ("train", "val"):
        extract(extract_config(tiny_params, split))
    return tiny_params


def _ok(result: Any) -> None:
    assert result.exit_code == 0, result.output + repr(result.exception)


def test_imported_features_train_and_evaluate_like_the_store_they_came_from(extracted: dict, tmp_path: Path) -> None:
    params = extracted
    train(train_config(params))
    original = evaluate(evaluate_config(params))
    original_train = json.loads((train_config(params).out_dir / "metrics.json").read_text())

    files = {}
    for seed, split in enumerate(("train", "val")):
        store = open_store(extract_config(params, split).out)
        files[split] = _write_h5(tmp_path / f"{split}.h5", _store_datasets(store, seed), {"extractor": EXTRACTOR})
    imported = _imported_params(params, tmp_path)
    params_file = write_params(imported, tmp_path / "imported.yaml")
    runner = CliRunner()
    for split, file in files.items():
        _ok(runner.invoke(app, ["import-features", "--split", split, "--features", str(file), "-p", str(params_file)]))

    for split in ("train", "val"):
        source = open_store(extract_config(params, split).out)
        store = open_store(extract_config(imported, split).out)
        assert store.is_complete() and sorted(store.views) == sorted(source.views) == [CONTEXT_MAP, ROI_POOLED]
        for view in store.views:
            np.testing.assert_array_equal(store.read_view(view), source.read_view(view))
        pd.testing.assert_frame_equal(store.clips, source.clips)
        pd.testing.assert_frame_equal(store.boxes, source.boxes)
        assert store.dims == {"C": source.dims["C"], "H": source.dims["H"], "W": source.dims["W"]}
        assert store.fingerprint["backbone"] == "imported" and store.fingerprint["weights"] == EXTRACTOR
        assert store.fingerprint["manifest"] == source.fingerprint["manifest"]
        record = json.loads((store.path / "imported.json").read_text())
        assert record["sha256"] == hashlib.sha256(files[split].read_bytes()).hexdigest()
        assert record["extra_box_rows"] == 0 and store.verify() == []

    _ok(runner.invoke(app, ["train-head", "-p", str(params_file)]))
    _ok(runner.invoke(app, ["evaluate", "-p", str(params_file)]))
    again = json.loads((evaluate_config(imported).out_dir / "metrics.json").read_text())
    again_train = json.loads((train_config(imported).out_dir / "metrics.json").read_text())
    assert again_train["final_loss"] == original_train["final_loss"]
    assert {k: v for k, v in again.items() if k != "head_run_id"} == {
        k: v for k, v in original.items() if k != "head_run_id"
    }
    assert 0 < again["frame_map"] <= 1

    # a head trained on the extracted features is refused on the imported ones (another extractor, for all it knows)
    with pytest.raises(HeadStoreMismatchError, match=r"backbone \"slowfast\" -> \"imported\""):
        evaluate(replace(evaluate_config(imported), checkpoint=train_config(params).out_dir / "head.pt"))


def test_reimport_is_a_no_op_a_changed_file_is_imported_afresh_and_an_extracted_store_is_kept(
    extracted: dict, tmp_path: Path
) -> None:
    source = open_store(extract_config(extracted, "train").out)
    datasets = _store_datasets(source, seed=1, clip_views=False)
    file = _write_h5(tmp_path / "train.h5", datasets, {"extractor": EXTRACTOR})
    imported = _imported_params(extracted, tmp_path)
    first = import_features(import_config(imported, "train", file))
    assert first.shards_written == open_store(first.store).num_shards and first.views == [ROI_POOLED]
    assert import_features(import_config(imported, "train", file)).shards_written == 0  # same file: nothing to do

    datasets["features/roi_pooled"] = datasets["features/roi_pooled"] * 2
    _write_h5(file, datasets, {"extractor": EXTRACTOR})
    second = import_features(import_config(imported, "train", file))
    assert second.shards_written == first.shards_written
    np.testing.assert_array_equal(open_store(second.store).read_view(ROI_POOLED), source.read_view(ROI_POOLED) * 2)

    with pytest.raises(ImportRefusedError, match=r"did not write \(backbone 'slowfast'\).*delete .*train\.zarr first"):
        import_features(import_config(extracted, "train", file))  # over the extracted store itself
    assert open_store(source.path).fingerprint["backbone"] == "slowfast"


def test_extra_rows_are_reported_and_other_videos_need_allow_extra(
    tiny_params: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    datasets, _ = _manifest_datasets(tiny_params)
    n = len(datasets["video_id"])
    extra = {  # two detections below the threshold on a known keyframe, one row of a video the split lacks
        "video_id": np.r_[datasets["video_id"], datasets["video_id"][:2], ["not_a_video"]].astype(object),
        "timestamp": np.r_[datasets["timestamp"], datasets["timestamp"][:2], [3]],
        "box": np.r_[datasets["box"], [[0.0, 0.0, 0.1, 0.1], [0.9, 0.9, 1.0, 1.0], [0.1, 0.1, 0.2, 0.2]]],
        "features/roi_pooled": np.r_[datasets["features/roi_pooled"], np.ones((3, 8), np.float32)],
    }
    file = _write_h5(tmp_path / "extra.h5", extra, {"extractor": EXTRACTOR})
    unknown = r"names 1 video\(s\) that split 'train' .*'not_a_video' \(1 rows\).*--allow-extra"
    with pytest.raises(InputError, match=unknown):
        import_features(import_config(tiny_params, "train", file))
    summary = import_features(import_config(tiny_params, "train", file, allow_extra=True))
    assert summary.extra_rows == 3 and summary.file_rows == n + 3 and summary.boxes == n
    assert f"3 of {n + 3} box rows match no box of split 'train' and are not imported" in caplog.text
    np.testing.assert_array_equal(
        open_store(summary.store).read_view(ROI_POOLED), datasets["features/roi_pooled"].astype(np.float16)
    )


def test_export_reads_back_equal_to_the_store_and_imports_to_the_same_store(extracted: dict, tmp_path: Path) -> None:
    params_file = write_params(extracted, tmp_path / "params.yaml")
    out = tmp_path / "export" / "val.h5"
    views = f"{ROI_POOLED},{CONTEXT_MAP},{BOX_ON_MAP}"
    _ok(
        CliRunner().invoke(
            app, ["export", "--split", "val", "--views", views, "--out", str(out), "-p", str(params_file)]
        )
    )
    store = open_store(extract_config(extracted, "val").out)
    video = store.clips["video_id"].to_numpy()
    with h5py.File(out, "r") as f:
        assert f.attrs["layout"] == "stcache-features" and f.attrs["layout_version"] == 1
        assert f.attrs["extractor"].startswith("stcache extract: backbone slowfast")
        assert list(f["video_id"].asstr()[()]) == list(video[store.boxes["clip_index"]])
        np.testing.assert_array_equal(
            f["timestamp"][()], store.clips["timestamp"].to_numpy()[store.boxes["clip_index"]]
        )
        np.testing.assert_array_equal(f["box"][()], store.boxes[["x1", "y1", "x2", "y2"]].to_numpy(np.float32))
        assert list(f["source"].asstr()[()]) == list(store.boxes["source"])
        assert f["features/roi_pooled"].dtype == np.float16
        np.testing.assert_array_equal(f["features/roi_pooled"][()], store.read_view(ROI_POOLED))
        np.testing.assert_array_equal(f["features/box_on_map"][()], manifest_view(BOX_ON_MAP, store.clips, store.boxes))
        assert list(f["clips/video_id"].asstr()[()]) == list(video)
        np.testing.assert_array_equal(f["clips/features/context_map"][()], store.read_view(CONTEXT_MAP))

    imported = _imported_params(extracted, tmp_path)
    back = open_store(import_features(import_config(imported, "val", out)).store)
    for view in (ROI_POOLED, CONTEXT_MAP):
        np.testing.assert_array_equal(back.read_view(view), store.read_view(view))
    train_file = tmp_path / "export" / "train.h5"
    _ok(CliRunner().invoke(app, ["export", "--split", "train", "--out", str(train_file), "-p", str(params_file)]))
    with h5py.File(train_file, "r") as f:  # both splits of one extraction name one extractor
        assert f.attrs["extractor"] == h5py.File(out, "r").attrs["extractor"]
        assert sorted(f["features"]) == [ROI_POOLED] and sorted(f["clips/features"]) == [CONTEXT_MAP]


# ---- bad input ------------------------------------------------------------------------------------------------
def _manifest_datasets(params: dict, split: str = "train") -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """A well-formed file for the split's manifest (features 8 wide, in manifest order), and its clips."""
    config = import_config(params, split, Path("unused.h5"))
    clips, boxes = build_manifest(config.manifest, config.sampling, config.stride)
    owner = boxes["clip_index"].to_numpy()
    rng = np.random.default_rng(0)
    datasets = {
        "video_id": clips["video_id"].to_numpy().astype(object)[owner],
        "timestamp": clips["timestamp"].to_numpy()[owner],
        "box": boxes[["x1", "y1", "x2", "y2"]].to_numpy(np.float32),
        "features/roi_pooled": rng.normal(size=(len(boxes), 8)).astype(np.float32),
    }
    return datasets, clips


def _with_clips(d: dict[str, np.ndarray], clips: pd.DataFrame, shape: tuple[int, ...] = (8, 8, 10)) -> None:
    d.update(
        {
            "clips/video_id": clips["video_id"].to_numpy().astype(object),
            "clips/timestamp": clips["timestamp"].to_numpy(),
            "clips/features/context_map": np.zeros((len(clips), *shape), np.float32),
        }
    )


def _drop_rows(d: dict[str, np.ndarray], rows: list[int]) -> None:
    for key in ("video_id", "timestamp", "box", "features/roi_pooled"):
        d[key] = np.delete(d[key], rows, axis=0)


def _set(key: str, value: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict[str, np.ndarray], pd.DataFrame], None]:
    def mutate(d: dict[str, np.ndarray], clips: pd.DataFrame) -> None:
        d[key] = value(d[key])

    return mutate


def _nan_at_row_5(values: np.ndarray) -> np.ndarray:
    values = values.copy()
    values[5, 3] = np.nan
    return values


BAD_FILES: dict[str, tuple[Callable[[dict[str, np.ndarray], pd.DataFrame], None], str]] = {
    "missing boxes": (
        lambda d, c: _drop_rows(d, [0, 1, 2]),
        r"bad\.h5: 3 of \d+ boxes of split 'train' have no row in video_id/timestamp/box \(within 0\.005 of each "
        r"coordinate\); first: video '\w+' timestamp \d+ box \[[\d., ]+\] \(gt, score 1\.00\): ",
    ),
    "a box moved": (
        _set("box", lambda b: b + np.float32(0.02) * (np.arange(len(b)) == 0)[:, None]),
        r"bad\.h5: 1 of \d+ boxes .* the file's \d+ row\(s\) of that keyframe are farther; nearest: row \d+ box "
        r"\[[\d., ]+\] \(off by 0\.0\d+\)",
    ),
    "a video not in the data set": (
        _set("video_id", lambda v: np.where(np.arange(len(v)) < 4, "no_such_video", v).astype(object)),
        r"bad\.h5: video_id names 1 video\(s\) that split 'train' of the data set does not have: 'no_such_video' "
        r"\(4 rows\); wrong split or data set\?",
    ),
    "features of the wrong shape": (
        _set("features/roi_pooled", lambda f: f[:, :, None]),
        r"bad\.h5: features/roi_pooled has rows of shape \[8, 1\]; view roi_pooled has rows \[C\]",
    ),
    "integer features": (
        _set("features/roi_pooled", lambda f: f.astype(np.int32)),
        r"bad\.h5: features/roi_pooled has dtype int32; features must be floating point",
    ),
    "numeric video ids": (
        _set("video_id", lambda v: np.arange(len(v))),
        r"bad\.h5: video_id has dtype int64 and shape \(\d+,\); expected \[n\] strings",
    ),
    "boxes in pixels": (
        _set("box", lambda b: b * 160),
        r"bad\.h5: box\[0\] is \[[\d., ]+\], outside \[0, 1\] \(\d+ such rows\); the layout wants x1, y1, x2, y2 "
        r"divided by the frame's width and height",
    ),
    "a box of 3 coordinates": (
        _set("box", lambda b: b[:, :3]),
        r"bad\.h5: box has dtype float32 and shape \[\d+, 3\]; expected \[n, 4\] floats",
    ),
    "fewer timestamps than rows": (
        _set("timestamp", lambda t: t[:-1]),
        r"bad\.h5: timestamp has \d+ rows, video_id has \d+",
    ),
    "a timestamp between keyframes": (
        _set("timestamp", lambda t: t + 0.5 * (np.arange(len(t)) == 0)),
        r"bad\.h5: timestamp\[0\] is \d+\.5; keyframe timestamps are whole seconds \(AVA\) or frames \(dense\)",
    ),
    "NaN in a feature": (
        _set("features/roi_pooled", _nan_at_row_5),
        r"bad\.h5: features/roi_pooled\[5\] holds NaN or Inf; features must be finite",
    ),
    "beyond float16": (
        _set("features/roi_pooled", lambda f: f * np.float32(1e6)),
        r"bad\.h5: features/roi_pooled\[\d+\] holds [\d.e+]+, beyond float16's range; import into float32",
    ),
    "an unknown view": (
        lambda d, c: d.update({"features/roi_poold": d.pop("features/roi_pooled")}),
        r"bad\.h5: features/roi_poold: unknown view 'roi_poold'; known views: roi_pooled, ",
    ),
    "a per-clip view among the boxes": (
        lambda d, c: d.update({"features/context_map": np.zeros((len(d["box"]), 8, 8, 10), np.float32)}),
        r"bad\.h5: features/context_map: view context_map has one row per clip; put it at clips/features/context_map",
    ),
    "views of two extractors": (
        lambda d, c: d.update({"features/roi_spatial": np.zeros((len(d["box"]), 16, 7, 7), np.float32)}),
        r"bad\.h5: features/roi_spatial gives C=16, features/roi_pooled gives C=8|"
        r"bad\.h5: features/roi_pooled gives C=8, features/roi_spatial gives C=16",
    ),
    "a map of another size": (
        lambda d, c: _with_clips(d, c, (8, 16, 29)),
        r"bad\.h5: clips/features/context_map has rows of shape \[8, 16, 29\], but the manifest's map is H=8, W=10",
    ),
    "a missing keyframe": (
        lambda d, c: (_with_clips(d, c), d.update({k: d[k][1:] for k in list(d) if k.startswith("clips/")})),
        r"bad\.h5: 1 of \d+ keyframes of split 'train' have no row in clips/video_id/timestamp; first: video '\w+' "
        r"timestamp \d+",
    ),
    "per-clip features without keys": (
        lambda d, c: d.update({"clips/features/context_map": np.zeros((len(c), 8, 8, 10), np.float32)}),
        r"bad\.h5: no dataset clips/video_id, clips/timestamp; the clip rows of clips/features/context_map need",
    ),
    "no features at all": (
        lambda d, c: d.pop("features/roi_pooled"),
        r"bad\.h5: no features: the layout wants per-box views in features/<view>",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_feature_file_is_one_message_naming_the_file_and_key(
    tiny_params: dict, tmp_path: Path, case: str
) -> None:
    mutate, message = BAD_FILES[case]
    datasets, clips = _manifest_datasets(tiny_params)
    mutate(datasets, clips)
    file = _write_h5(tmp_path / "bad.h5", datasets)
    with pytest.raises(InputError, match=message) as error:
        import_features(import_config(tiny_params, "train", file))
    assert "\n" not in str(error.value)
    print(f"{case}: {error.value}")


def test_a_box_without_its_row_never_takes_a_neighbours_row(tiny_params: dict, tmp_path: Path) -> None:
    """A detection a few thousandths from a ground-truth box keeps its own row, even within a loose tolerance."""
    datasets, _ = _manifest_datasets(tiny_params)
    box = datasets["box"].astype(np.float64)
    gap = np.abs(box[:, None] - box[None]).max(axis=2) + np.eye(len(box))
    gap[datasets["video_id"][:, None] != datasets["video_id"][None]] = 1
    gap[datasets["timestamp"][:, None] != datasets["timestamp"][None]] = 1
    row, neighbour = np.unravel_index(gap.argmin(), gap.shape)
    assert gap[row, neighbour] < 0.01  # the synthetic detector puts detections this close to ground truth
    _drop_rows(datasets, [int(row)])
    file = _write_h5(tmp_path / "bad.h5", datasets, {"extractor": EXTRACTOR})
    config = import_config(tiny_params, "train", file, box_tolerance=0.01)
    with pytest.raises(
        InputError, match=r"1 of \d+ boxes .* within the tolerance feed nearer boxes \(one box per row\)"
    ):
        import_features(config)


def test_the_cli_prints_a_bad_file_as_one_line_and_keeps_the_store(
    tiny_params: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = write_params(tiny_params, tmp_path / "params.yaml")
    text = tmp_path / "features.h5"
    text.write_text("video_id,timestamp\n")
    with pytest.raises(SystemExit) as exit_info:
        run(["import-features", "--split", "train", "--features", str(text), "--params", str(params)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {text} is not a readable HDF5 file (")
    with pytest.raises(SystemExit) as exit_info:
        run(["import-features", "--features", str(tmp_path / "nope.h5"), "--params", str(params)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: no features file at {tmp_path / 'nope.h5'} (-v shows the traceback)\n"
    assert not (Path(tiny_params["paths"]["cache"]) / "train.zarr").exists()  # nothing was written


def test_export_refuses_a_view_the_store_lacks(extracted: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params = write_params(extracted, tmp_path / "params.yaml")
    with pytest.raises(SystemExit) as exit_info:
        run(["export", "--split", "val", "--views", "roi_spatial", "--out", str(tmp_path / "x.h5"), "-p", str(params)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "has no view 'roi_spatial' (it holds context_map, roi_pooled)" in err and not (tmp_path / "x.h5").exists()
