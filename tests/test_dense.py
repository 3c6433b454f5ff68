"""Dense data sets in the pipeline's row space: ground truth as AVA-shaped rows, scores back to per-frame detections."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.data.act import dense_dataset_from_dict
from stages.data.ava import LabelMap
from stages.data.dense import dense_annotations, label_ids, per_frame_detections, split_videos


@pytest.fixture()
def dataset():
    # one video, 100x200 (h, w); actor A: "stand" frames 1-3 and "talk" frames 2-3 (same box); actor B: "stand" frame 2
    a = [[1, 10, 20, 30, 60], [2, 10, 20, 30, 60], [3, 12, 20, 32, 60]]
    return dense_dataset_from_dict(
        {
            "labels": ["stand", "talk"],
            "train_videos": [["v"]],
            "test_videos": [["w"]],
            "nframes": {"v": 5, "w": 5},
            "resolution": {"v": (100, 200), "w": (100, 200)},
            "gttubes": {
                "v": {0: [np.array(a, float), np.array([[2, 100, 0, 150, 50]], float)], 1: [np.array(a[1:], float)]},
                "w": {},
            },
        }
    )


def test_label_ids_match_names_and_name_the_missing(dataset):
    label_map = LabelMap(names={12: "stand", 79: "talk", 3: "crouch"}, categories={12: "pose", 79: "person", 3: "pose"})
    assert label_ids(dataset, label_map) == [12, 79]
    with pytest.raises(ValueError, match=r"\['talk'\]"):
        label_ids(dataset, LabelMap(names={12: "stand"}, categories={12: "pose"}))


def test_dense_annotations_group_identical_boxes_into_one_actor(dataset):
    gt = dense_annotations(dataset, split_videos(dataset, "train"), [12, 79])
    frame2 = gt[gt["timestamp"] == 2].sort_values(["person_id", "action_id"])
    # frame 2: actor A (box 10,20,30,60 -> 0.05, 0.2, 0.15, 0.6) stands and talks; actor B stands
    assert list(frame2["action_id"]) == [12, 79, 12]
    assert frame2["person_id"].tolist()[:2] == [frame2["person_id"].iloc[0]] * 2
    assert frame2["person_id"].nunique() == 2
    np.testing.assert_allclose(frame2.iloc[0][["x1", "y1", "x2", "y2"]].to_numpy(float), [0.05, 0.2, 0.15, 0.6])
    strided = dense_annotations(dataset, ["v"], [12, 79], keyframe_stride=2)
    assert sorted(strided["timestamp"].unique()) == [1, 3]
    assert split_videos(dataset, "val") == ("w",)


def test_per_frame_detections_are_pixels_with_label_indices(dataset):
    boxes = pd.DataFrame({"video_id": ["v"], "timestamp": [2], "x1": [0.05], "y1": [0.2], "x2": [0.15], "y2": [0.6]})
    scores = np.array([[0.1, 0.7, 0.9]])  # a head's columns: ids 3, 12, 79
    dets = per_frame_detections(boxes, scores, dataset, ids=[12, 79], class_ids=[3, 12, 79])
    assert list(dets["label"]) == [0, 1] and list(dets["score"]) == pytest.approx([0.7, 0.9])
    np.testing.assert_allclose(dets.iloc[0][["x1", "y1", "x2", "y2"]].to_numpy(float), [10, 20, 30, 60])
    assert set(dets["frame"]) == {2}


def test_dense_pipeline_trains_its_own_head_setting(tiny_params):
    from pipeline.config import train_config

    tiny_params["head"]["name"] = "acar"  # an AVA ablation must not change the dense pipeline's head
    tiny_params["dense"]["head"] = "linear"
    assert train_config(tiny_params, "dense").head == "linear"
    assert train_config(tiny_params).head == "acar"
