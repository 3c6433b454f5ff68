"""Tests for the synthetic AVA-layout data set: layout, readability, determinism, labels and pixels agree."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from stages.data.act import read_dense_dataset
from stages.data.ava import (
    BOX_COLUMNS,
    read_annotations,
    read_excluded_timestamps,
    read_label_map,
    read_predicted_boxes,
)
from stages.data.synth import (
    DENSE_LABELS,
    GIVE,
    LISTEN,
    POSES,
    STAND,
    SYNTH_CLASSES,
    TAKE,
    TALK,
    THROW,
    WATCH,
    SynthConfig,
    dense_tubes,
    generate,
    make_scenes,
    split_tables,
)

TINY = SynthConfig(seed=7, num_videos_train=2, num_videos_val=1, duration_s=3, excluded_fraction=0.25)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("synth_tiny")
    return out, generate(TINY, out)


@pytest.fixture(scope="module")
def default_scenes() -> list:
    return make_scenes(SynthConfig())


def _csvs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.suffix in (".csv", ".pbtxt", ".pkl"))


def test_layout(tiny: tuple[Path, dict[str, int]]) -> None:
    out, counts = tiny
    expected = [
        "label_map.pbtxt",
        "annotations/train.csv",
        "annotations/val.csv",
        "excluded_timestamps_train.csv",
        "excluded_timestamps_val.csv",
        "predicted_boxes_train.csv",
        "predicted_boxes_val.csv",
        "videos/synth_train_000.mp4",
        "videos/synth_train_001.mp4",
        "videos/synth_val_000.mp4",
        "dense/gt.pkl",
        "dense/predicted_boxes_train.csv",
        "dense/predicted_boxes_val.csv",
    ]
    for name in expected:
        assert (out / name).is_file(), name
    assert len(list((out / "videos").iterdir())) == 3
    assert counts["train_videos"] == 2 and counts["val_videos"] == 1
    assert counts["train_keyframes"] + counts["train_excluded"] == 2 * (TINY.duration_s - 1)
    assert counts["dense_train_frames"] == 2 * _num_labelled(TINY) and counts["dense_val_frames"] == _num_labelled(TINY)


def test_csvs_are_readable_ava(tiny: tuple[Path, dict[str, int]]) -> None:
    out, counts = tiny
    label_map = read_label_map(out / "label_map.pbtxt")
    assert label_map == SYNTH_CLASSES
    for split in ("train", "val"):
        ann = read_annotations(out / "annotations" / f"{split}.csv", label_map)
        pred = read_predicted_boxes(out / f"predicted_boxes_{split}.csv")
        excluded = read_excluded_timestamps(out / f"excluded_timestamps_{split}.csv")
        assert len(ann) == counts[f"{split}_rows"] and len(pred) == counts[f"{split}_predicted_boxes"]
        assert set(ann["video_id"]) <= {p.stem for p in (out / "videos").iterdir()}
        assert pred["action_id"].isna().all()
        assert ann["timestamp"].between(1, TINY.duration_s - 1).all()
        # Excluded keyframes are gone from the ground truth but still have detections.
        keys = set(zip(ann["video_id"], ann["timestamp"], strict=True))
        for video_id, timestamp in zip(excluded["video_id"], excluded["timestamp"], strict=True):
            assert (video_id, timestamp) not in keys
            assert ((pred["video_id"] == video_id) & (pred["timestamp"] == timestamp)).any()
    assert counts["train_excluded"] + counts["val_excluded"] >= 1


def test_csvs_are_deterministic(tiny: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    out, _ = tiny
    generate(TINY, tmp_path / "again")
    generate(replace(TINY, seed=8), tmp_path / "other")
    for path in _csvs(out):
        relative = path.relative_to(out)
        assert (tmp_path / "again" / relative).read_bytes() == path.read_bytes(), relative
    for path in sorted((out / "videos").iterdir()):  # the encoder too, so the data set's DVC hash is stable
        assert (tmp_path / "again" / "videos" / path.name).read_bytes() == path.read_bytes(), path.name
    assert (tmp_path / "other" / "annotations" / "train.csv").read_bytes() != (
        out / "annotations" / "train.csv"
    ).read_bytes()


def _one_pose_each(ann: pd.DataFrame) -> None:
    poses = ann[ann["action_id"].isin(POSES)].groupby(["video_id", "timestamp", "person_id"]).size()
    actors = ann.groupby(["video_id", "timestamp", "person_id"]).size()
    assert len(poses) == len(actors)
    assert (poses == 1).all()


def test_every_actor_has_exactly_one_pose(tiny: tuple[Path, dict[str, int]], default_scenes: list) -> None:
    out, _ = tiny
    _one_pose_each(read_annotations(out / "annotations" / "train.csv"))
    _one_pose_each(pd.concat([s.annotations for s in default_scenes]))


def test_every_keyframe_annotates_every_actor(default_scenes: list) -> None:
    for scene in default_scenes[:6]:
        per_keyframe = scene.annotations.groupby("timestamp")["person_id"].nunique()
        assert per_keyframe.index.tolist() == scene.keyframes
        assert (per_keyframe == len(scene.actors)).all()


def test_video_decodes_with_expected_frames(tiny: tuple[Path, dict[str, int]]) -> None:
    out, _ = tiny
    with av.open(str(out / "videos" / "synth_val_000.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert abs(len(frames) - TINY.duration_s * TINY.fps) <= 1
    assert frames[0].shape == (TINY.height, TINY.width, 3)


def test_actors_are_where_the_boxes_say(tiny: tuple[Path, dict[str, int]]) -> None:
    """In the decoded video, each GT box region differs clearly from the same region of the empty background,
    while a region away from every actor does not."""
    out, _ = tiny
    scene = next(s for s in make_scenes(TINY) if s.video_id == "synth_train_000")
    with av.open(str(out / "videos" / f"{scene.video_id}.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    background = scene.background.astype(np.float64)
    boxes = scene.annotations.drop_duplicates(["timestamp", "person_id"])
    for timestamp, group in boxes.groupby("timestamp"):
        frame = frames[int(timestamp) * scene.fps].astype(np.float64)
        covered = np.zeros(frame.shape[:2], dtype=bool)
        for x1, y1, x2, y2 in group[BOX_COLUMNS].to_numpy():
            cols = slice(int(x1 * scene.width), int(np.ceil(x2 * scene.width)))
            rows = slice(int(y1 * scene.height), int(np.ceil(y2 * scene.height)))
            covered[rows, cols] = True
            assert np.abs(frame[rows, cols] - background[rows, cols]).mean() > 8.0
        # Outside the boxes only small objects and codec noise differ from the background.
        assert np.median(np.abs(frame[~covered] - background[~covered])) < 8.0


def test_relational_labels_come_in_pairs(default_scenes: list) -> None:
    for scene in default_scenes:
        for _, keyframe in scene.annotations.groupby("timestamp"):
            labels = keyframe["action_id"].value_counts()
            assert labels.get(GIVE, 0) == labels.get(TAKE, 0)
            assert labels.get(TALK, 0) == labels.get(LISTEN, 0)


def test_cues_match_labels(default_scenes: list) -> None:
    """Talkers show the cue at the keyframe, listeners never do; watchers show the eye and face someone."""
    for scene in default_scenes:
        for row in scene.annotations.itertuples():
            actor = scene.actors[row.person_id]
            f = row.timestamp * scene.fps
            if row.action_id == TALK:
                assert actor.talking[f]
            if row.action_id == LISTEN:
                assert not actor.talking[f - scene.fps : f + scene.fps + 1].any()
            if row.action_id == WATCH:
                assert actor.gaze[f]
                side = actor.facing[f] * np.array([o.x[f] - actor.x[f] for o in scene.actors if o is not actor])
                assert (side > 0).any()


def test_class_frequencies_are_long_tailed(default_scenes: list) -> None:
    train = split_tables(default_scenes, SynthConfig(), "train")["annotations"]
    counts = train["action_id"].value_counts()
    assert set(counts.index) == set(SYNTH_CLASSES.ids)
    assert counts.idxmax() == STAND
    assert counts.max() / counts.min() >= 20


def test_detections_overlap_ground_truth(default_scenes: list) -> None:
    scene = default_scenes[0]
    gt = scene.annotations.drop_duplicates(["timestamp", "person_id"])
    pred = scene.predicted_boxes
    good = pred[pred["score"] >= 0.7]
    assert pred["score"].between(0.05, 1.0).all()
    ious = []
    for timestamp, boxes in gt.groupby("timestamp"):
        candidates = good[good["timestamp"] == timestamp][BOX_COLUMNS].to_numpy()
        for box in boxes[BOX_COLUMNS].to_numpy():
            if len(candidates):
                ious.append(_iou(box, candidates).max())
    assert np.median(ious) > 0.7


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], others[:, 0]), np.maximum(box[1], others[:, 1])
    x2, y2 = np.minimum(box[2], others[:, 2]), np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (area + (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1]) - inter)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="even"):
        SynthConfig(width=161)
    with pytest.raises(ValueError, match="min_actors"):
        SynthConfig(min_actors=3, max_actors=2)


# ----------------------------------------------------------------------------------------------- dense form

# SHA-256 of TINY's AVA files as generated before the dense output existed: adding it must not change them.
_TINY_AVA_SHA256 = {
    "label_map.pbtxt": "910c1fab1884a8af77d9996c6634cf20257223fd5774b13417a77e3e014cba4c",
    "annotations/train.csv": "52f6148fd7e366f413dcb917de362ff3d687b02439bbde97c3ba449ac8fa922b",
    "annotations/val.csv": "b51a7dcd9d6a785808663bdc98a8c73a194d3dbe35715ba2b35c16091fb82f00",
    "excluded_timestamps_train.csv": "5eac4531cbd5c9181b79ceb316c5bb7f0ce742fce54dcdbf41d2981d34717296",
    "excluded_timestamps_val.csv": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "predicted_boxes_train.csv": "5ce8fadcc3bf9b429d7f2741da10b00d2e22bf658ad830948d33cedde741f1c1",
    "predicted_boxes_val.csv": "df794805bea9258053cebe820f997ac37f61cc01d024a01dfa7d375c81b69dda",
}


def _num_labelled(config: SynthConfig) -> int:
    """Dense-labelled frames per video: 0-based fps .. num_frames - fps (first to last keyframe)."""
    return config.duration_s * config.fps - 2 * config.fps + 1


def test_ava_files_unchanged_by_dense_output(tiny: tuple[Path, dict[str, int]]) -> None:
    out, _ = tiny
    for name, digest in _TINY_AVA_SHA256.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name


def test_dense_pickle_reads(tiny: tuple[Path, dict[str, int]]) -> None:
    out, counts = tiny
    ds = read_dense_dataset(out / "dense" / "gt.pkl")
    assert ds.labels == DENSE_LABELS == tuple(SYNTH_CLASSES.names[i] for i in sorted(SYNTH_CLASSES.names))
    assert ds.train_videos == (("synth_train_000", "synth_train_001"),) and ds.test_videos == (("synth_val_000",),)
    num_frames = TINY.duration_s * TINY.fps
    assert set(ds.nframes.values()) == {num_frames}
    assert set(ds.resolution.values()) == {(TINY.height, TINY.width)}
    first, last = TINY.fps + 1, num_frames - TINY.fps + 1  # 1-based
    for split, videos in (("train", ds.train_videos[0]), ("val", ds.test_videos[0])):
        tubes = [t for v in videos for per_label in ds.gttubes[v].values() for t in per_label]
        assert len(tubes) == counts[f"dense_{split}_tubes"]
        for tube in tubes:
            assert tube[0, 0] >= first and tube[-1, 0] <= last
            assert (np.diff(tube[:, 0]) == 1).all()  # a tube is one run of consecutive frames
            assert (tube[:, 1:3] >= 0).all() and (tube[:, 3] <= TINY.width).all() and (tube[:, 4] <= TINY.height).all()


def test_keyframe_annotations_lie_on_dense_tubes(tiny: tuple[Path, dict[str, int]]) -> None:
    """Each keyframe row is on a tube of its label at frame t * fps + 1 with its box; nothing else is there."""
    out, _ = tiny
    ds = read_dense_dataset(out / "dense" / "gt.pkl")
    scale = np.array([TINY.width, TINY.height, TINY.width, TINY.height])
    for split in ("train", "val"):
        ann = read_annotations(out / "annotations" / f"{split}.csv")
        for row in ann.itertuples():
            frame = row.timestamp * TINY.fps + 1
            label = SYNTH_CLASSES.ids.index(row.action_id)
            boxes = [t[t[:, 0] == frame, 1:] / scale for t in ds.gttubes[row.video_id].get(label, [])]
            boxes = [b[0] for b in boxes if len(b)]
            box = np.array([row.x1, row.y1, row.x2, row.y2])
            assert any(np.abs(b - box).max() <= 1e-3 + 1e-9 for b in boxes), row
        # The converse: at annotated keyframes the tubes hold exactly as many rows as the annotations.
        gt = ds.gt_boxes(sorted(set(ann["video_id"])))
        keys = set(zip(ann["video_id"], ann["timestamp"] * TINY.fps + 1, strict=True))
        at_keyframes = [key in keys for key in zip(gt["video"], gt["frame"], strict=True)]
        assert sum(at_keyframes) == len(ann)


def test_dense_labels_at_keyframes_are_the_keyframe_labels(default_scenes: list) -> None:
    """Same rules, same numbers: the dense rows of a keyframe's frame equal its AVA rows (boxes in pixels)."""
    for scene in default_scenes:
        dense = scene.dense_annotations
        at_keyframes = dense[dense["frame"] % scene.fps == 0].sort_values(["frame", "person_id", "action_id"])
        ann = scene.annotations
        assert (at_keyframes["frame"].to_numpy() == ann["timestamp"].to_numpy() * scene.fps).all()
        assert (at_keyframes[["person_id", "action_id"]].to_numpy() == ann[["person_id", "action_id"]].to_numpy()).all()
        scale = np.array([scene.width, scene.height, scene.width, scene.height])
        assert np.array_equal(at_keyframes[BOX_COLUMNS].to_numpy() / scale, ann[BOX_COLUMNS].to_numpy())


def test_pose_tubes_tile_each_actor(default_scenes: list) -> None:
    """Every actor has exactly one pose at every labelled frame, and tubes are maximal runs."""
    for scene in default_scenes[:8]:
        frames = np.arange(scene.labelled_frames.start, scene.labelled_frames.stop) + 1
        tubes = [t for per_label in dense_tubes(scene).values() for t in per_label]
        for a in range(len(scene.actors)):
            pose_frames = np.concatenate([t.rows[:, 0] for t in tubes if t.person_id == a and t.action_id in POSES])
            assert np.array_equal(np.sort(pose_frames), frames)
        runs: dict[tuple[int, int], list[np.ndarray]] = {}
        for t in tubes:
            runs.setdefault((t.person_id, t.action_id), []).append(t.rows[:, 0])
        for parts in runs.values():
            for before, after in zip(parts, parts[1:], strict=False):
                assert after[0] > before[-1] + 1  # a gap, else the two would be one tube


def test_short_events_label_every_frame_whose_window_holds_them(default_scenes: list) -> None:
    seen = set()
    for scene in default_scenes:
        dense = scene.dense_annotations
        for event in scene.events:
            seen.add(event.action_id)
            got = dense[(dense["person_id"] == event.actor) & (dense["action_id"] == event.action_id)]["frame"]
            expected = [
                c
                for c in scene.labelled_frames
                if max(0, c - scene.fps) <= event.start and event.end <= min(scene.num_frames - 1, c + scene.fps)
            ]
            assert got.tolist() == expected and expected
    assert {GIVE, TAKE, THROW} <= seen


def test_dense_predicted_boxes(tiny: tuple[Path, dict[str, int]]) -> None:
    out, counts = tiny
    ds = read_dense_dataset(out / "dense" / "gt.pkl")
    first, last = TINY.fps + 1, TINY.duration_s * TINY.fps - TINY.fps + 1
    scale = np.array([TINY.width, TINY.height, TINY.width, TINY.height])
    for split in ("train", "val"):
        pred = read_predicted_boxes(out / "dense" / f"predicted_boxes_{split}.csv")
        assert len(pred) == counts[f"dense_{split}_predicted_boxes"] > 0
        assert pred["timestamp"].between(first, last).all()
        assert ((pred["score"] > 0) & (pred["score"] <= 1)).all()
        assert pred["action_id"].isna().all()
        ious = []
        for (video, frame), group in pred[pred["score"] >= 0.7].groupby(["video_id", "timestamp"]):
            gt = np.array(
                [t[t[:, 0] == frame, 1:][0] for ts in ds.gttubes[video].values() for t in ts if frame in t[:, 0]]
            )
            for box in group[BOX_COLUMNS].to_numpy():
                ious.append(_iou(box, gt / scale).max())
        assert np.median(ious) > 0.7
