"""A data set laid out as AVA distributes it: AVA's file names, 15-minute cuts whose first frame is t = 900 s,
``.mkv`` / ``.webm`` / ``.mp4`` files and a PySlowFast frame folder, run through extract -> train-head -> evaluate."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.config import data_layout, evaluate_config, extract_config, train_config
from stages.data.layout import DataLayout, LayoutError
from stages.data.video import ClipSampling, ClipsFailedError, iter_keyframe_clips, video_info
from stages.evaluate import evaluate
from stages.extract import extract
from stages.train import train

AVA_OFFSET = 900
# AVA-like ids (YouTube's 11 characters, some with a leading dash) and the container each video comes in
VIDEOS = {
    "synth_train_000": ("-5KQ66BBWC4", ".mkv"),
    "synth_train_001": ("2PpxiG0WU18", ".webm"),
    "synth_train_002": ("_7oWZq_s_Sk", "frames"),
    "synth_val_000": ("-FaXLcSFjUI", ".mp4"),
    "synth_val_001": ("1j20qq1JyX4", ".mp4"),
}
DATASET = {
    "label_map": "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
    "annotations": "annotations/ava_{split}_v2.2.csv",
    "predicted_boxes": "ava_{split}_predicted_boxes.csv",
    "excluded_timestamps": "annotations/ava_{split}_excluded_timestamps_v2.2.csv",
    "frames": "frames/{video_id}/{video_id}_%06d.jpg",
    "time_offset_s": AVA_OFFSET,
}
KEYFRAME_ONLY = ClipSampling(num_frames=1, frame_stride=1)


def _decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _encode(frames: list[np.ndarray], path: Path, codec: str, fps: int, image: bool = False) -> None:
    with av.open(str(path), "w", format="image2" if image else None) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for image_frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image_frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _shift_csv(src: Path, dst: Path) -> None:
    """Rename the videos and move every timestamp by the cut's start, written as AVA writes them (%04d)."""
    rows = []
    for line in src.read_text().splitlines():
        video, timestamp, *rest = line.split(",")
        rows.append(",".join([VIDEOS[video][0], f"{int(timestamp) + AVA_OFFSET:04d}", *rest]))
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def ava_root(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ava")
    (root / DATASET["label_map"]).write_bytes((tiny_data / "label_map.pbtxt").read_bytes())
    for split in ("train", "val"):
        _shift_csv(tiny_data / "annotations" / f"{split}.csv", root / DATASET["annotations"].format(split=split))
        _shift_csv(tiny_data / f"predicted_boxes_{split}.csv", root / DATASET["predicted_boxes"].format(split=split))
        excluded = tiny_data / f"excluded_timestamps_{split}.csv"
        if excluded.exists():
            _shift_csv(excluded, root / DATASET["excluded_timestamps"].format(split=split))
    (root / "videos").mkdir()
    for synth_id, (video_id, container) in VIDEOS.items():
        source = tiny_data / "videos" / f"{synth_id}.mp4"
        fps = round(video_info(source)[1])
        frames = _decoded(source)
        if container == ".mp4":
            (root / "videos" / f"{video_id}.mp4").write_bytes(source.read_bytes())
        elif container == "frames":
            folder = root / "frames" / video_id
            folder.mkdir(parents=True)
            for number, frame in enumerate(frames, start=1):  # PySlowFast numbers frames from 1
                _encode([frame], folder / f"{video_id}_{number:06d}.jpg", "mjpeg", fps, image=True)
        else:
            _encode(
                frames, root / "videos" / f"{video_id}{container}", "libx264" if container == ".mkv" else "libvpx", fps
            )
    return root


@pytest.fixture()
def ava_params(tiny_params: dict, ava_root: Path, tiny_data: Path) -> dict:
    tiny_params["paths"]["data"] = str(ava_root)
    fps = round(video_info(tiny_data / "videos" / "synth_train_000.mp4")[1])
    tiny_params["dataset"] = {**DATASET, "frame_rate": fps}
    return tiny_params


@pytest.mark.parametrize("synth_id", sorted(VIDEOS))
def test_keyframe_902_is_the_frame_two_seconds_into_the_file(ava_params: dict, synth_id: str) -> None:
    layout = data_layout(ava_params)
    video_id, container = VIDEOS[synth_id]
    source = layout.video(video_id)
    fps = round(video_info(source)[1])
    ((timestamp, clip),) = iter_keyframe_clips(source, [902.0], KEYFRAME_ONLY)
    if container == "frames":
        assert source.is_sequence
        expected = _decoded(source.path.parent / f"{video_id}_{2 * fps + 1:06d}.jpg")[0]  # file 1 is t = 900 s
    else:
        assert source.path.suffix == container
        expected = _decoded(source.path)[2 * fps]
    assert timestamp == 902.0
    np.testing.assert_array_equal(clip[0], expected)


@pytest.mark.parametrize("video_id", ["../../etc/passwd", "/abs/x", "a\\b", "a\0b", "..", ""])
def test_a_video_id_is_a_name_never_a_path(ava_root: Path, video_id: str) -> None:
    with pytest.raises(LayoutError, match="is not a plain name"):
        DataLayout(ava_root).video(video_id)
    with pytest.raises(LayoutError, match="is not a plain name"):
        DataLayout(ava_root, frames=DATASET["frames"]).video(video_id)


def test_file_templates_stay_inside_the_data_root(ava_root: Path) -> None:
    with pytest.raises(LayoutError, match="outside .*refusing to read outside the data set"):
        DataLayout(ava_root, annotations="../../{split}.csv").annotations_path("train")


def test_extract_train_evaluate_on_the_ava_layout(ava_params: dict) -> None:
    stores = [extract(extract_config(ava_params, split)) for split in ("train", "val")]
    for summary in stores:
        assert summary.failed_clips == 0 and summary.failed_videos == {}
    result = train(train_config(ava_params))
    metrics = evaluate(evaluate_config(ava_params))
    assert result.checkpoint.exists()
    assert 0.0 < metrics["frame_map"] <= 1.0


def test_without_the_time_offset_every_clip_is_outside_its_video(ava_params: dict) -> None:
    del ava_params["dataset"]["time_offset_s"]
    with pytest.raises(ClipsFailedError, match=r"clips failed in 2 video.*keyframe 90\d s is frame \d+, outside"):
        extract(extract_config(ava_params, "val"))


def test_links_out_of_the_data_set_are_followed_only_when_allowed(ava_root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.mp4"
    elsewhere.write_bytes((ava_root / "videos" / "-FaXLcSFjUI.mp4").read_bytes())
    link = ava_root / "videos" / "linked0000a.mp4"
    link.symlink_to(elsewhere)
    try:
        with pytest.raises(LayoutError, match="is a link to .*set dataset.follow_symlinks: true"):
            DataLayout(ava_root).video("linked0000a")
        assert DataLayout(ava_root, follow_symlinks=True).video("linked0000a").path == link
    finally:
        link.unlink()


def test_per_video_time_offsets_override_the_global_one(ava_root: Path, ava_params: dict) -> None:
    """AVA-Kinetics style: each clip's own start, from a video_id,offset_s file."""
    video_id = VIDEOS["synth_val_000"][0]
    (ava_root / "offsets.csv").write_text(f"video_id,offset_s\n{video_id},900\n")
    try:
        layout = DataLayout(ava_root, time_offset_s=0.0, time_offsets="offsets.csv")
        source = layout.video(video_id)
        assert source.time_offset_s == 900.0 and layout.video(VIDEOS["synth_val_001"][0]).time_offset_s == 0.0
        fps = round(video_info(source)[1])
        ((_, clip),) = iter_keyframe_clips(source, [902.0], KEYFRAME_ONLY)
        np.testing.assert_array_equal(clip[0], _decoded(source.path)[2 * fps])
        digest = layout.offsets_digest()
        assert digest is not None and len(digest) == 16 and DataLayout(ava_root).offsets_digest() is None
        ava_params["dataset"]["time_offsets"] = "offsets.csv"
        assert extract_config(ava_params, "val").data.offsets_digest() == digest
    finally:
        (ava_root / "offsets.csv").unlink()
