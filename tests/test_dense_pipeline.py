"""The MultiSports-style pipeline on the tiny synthetic set: frames as keyframes, tubes linked and scored."""

from __future__ import annotations

import json

from cache_spec.store import open_store
from pipeline.config import evaluate_config, extract_config, train_config
from stages.data.act import read_dense_dataset
from stages.evaluate import evaluate
from stages.extract import extract
from stages.train import train


def test_dense_pipeline_extracts_frames_and_reports_frame_and_video_map(tiny_params, tiny_data):
    tiny_params["dense"]["link"]["min_length"] = 5  # the tiny videos are 5 s at 16 fps
    for split in ("train", "val"):
        extract(extract_config(tiny_params, split, dataset="dense"))
    store = open_store(extract_config(tiny_params, "val", dataset="dense").out)
    dataset = read_dense_dataset(tiny_data / "dense" / "gt.pkl")
    assert store.fingerprint["dataset"] == "dense"
    # every labelled frame of a val video is a keyframe (frame numbers in the timestamp column)
    video = dataset.test_videos[0][0]
    frames = set(dataset.gt_boxes([video])["frame"])
    assert frames <= set(store.clips.loc[store.clips["video_id"] == video, "timestamp"])
    train(train_config(tiny_params, "dense"))
    config = evaluate_config(tiny_params, "dense")
    metrics = evaluate(config)
    assert metrics == json.loads((config.out_dir / "metrics.json").read_text())
    assert metrics["protocol"] == "multisports" and 0 <= metrics["frame_map"] <= 1
    assert {"video_map@0.2", "video_map@0.5", "video_map_0.1:0.9"} <= set(metrics)
    assert metrics["tubes"] > 0 and (config.out_dir / "tubes.parquet").exists()
