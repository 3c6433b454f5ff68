"""Clip decoding around keyframes: indices, edge clamping, corrupt files, preprocessing.

The test videos encode each frame's index as 8 black/white vertical stripes (one bit each), which survives
H.264 compression, so a decoded clip can be read back as the list of source frame indices it holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from stages.data.video import (
    ClipSampling,
    VideoDecodeError,
    clip_frame_indices,
    iter_keyframe_clips,
    preprocess_clip,
    video_info,
)
from stages.models.backbones import build_backbone, check_clip_size
from stages.models.slowfast import SlowFastConfig

FPS = 30
HEIGHT, WIDTH = 48, 64
BITS = 8
STRIPE = WIDTH // BITS


def _frame_for(index: int) -> np.ndarray:
    frame = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    for bit in range(BITS):
        if (index >> bit) & 1:
            frame[:, bit * STRIPE : (bit + 1) * STRIPE] = 255
    return frame


def _read_index(frame: np.ndarray) -> int:
    centres = frame[:, STRIPE // 4 :: STRIPE][:, :BITS].mean(axis=(0, 2))  # one column per stripe, away from edges
    return int(sum(1 << bit for bit, value in enumerate(centres) if value > 128))


def _write_video(path: Path, num_frames: int, codec: str = "libx264", faststart: bool = False) -> Path:
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(_frame_for(i), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_video(tmp_path_factory.mktemp("video") / "clip.mp4", 120)


SAMPLING = ClipSampling(num_frames=8, frame_stride=2)


def test_clip_frame_indices_follow_pyslowfast() -> None:
    # get_sequence(centre, half_len=T*tau//2, tau): range(centre - 8, centre + 8, 2)
    assert clip_frame_indices(50, 120, SAMPLING).tolist() == list(range(42, 58, 2))
    assert clip_frame_indices(2, 120, SAMPLING).tolist() == [0, 0, 0, 0, 2, 4, 6, 8]
    assert clip_frame_indices(118, 120, SAMPLING).tolist() == [110, 112, 114, 116, 118, 119, 119, 119]
    assert clip_frame_indices(3, 4, SAMPLING).tolist() == [0, 0, 0, 1, 3, 3, 3, 3]


def test_frame_code_round_trips(video: Path) -> None:
    container = av.open(str(video))
    decoded = [_read_index(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    container.close()
    assert decoded == list(range(120))


def test_clips_hold_the_expected_frames(video: Path) -> None:
    timestamps = [2.0, 0.0, 1.0, 119 / FPS, 0.5]  # unsorted on purpose, with both ends of the video
    clips = list(iter_keyframe_clips(video, timestamps, SAMPLING))
    assert [ts for ts, _ in clips] == sorted(timestamps)
    for ts, clip in clips:
        assert clip.dtype == np.uint8 and clip.shape == (8, HEIGHT, WIDTH, 3)
        expected = clip_frame_indices(round(ts * FPS), 120, SAMPLING).tolist()
        assert [_read_index(f) for f in clip] == expected, ts
    first, last = clips[0][1], clips[-1][1]
    assert [_read_index(f) for f in first] == [0, 0, 0, 0, 0, 2, 4, 6]  # start repeats frame 0
    assert [_read_index(f) for f in last][-4:] == [119, 119, 119, 119]  # end repeats the last frame


def test_time_offset_and_duplicates(video: Path) -> None:
    clips = list(iter_keyframe_clips(video, [901.0, 901.0], SAMPLING, time_offset_s=900.0))
    assert len(clips) == 2
    for _, clip in clips:
        assert [_read_index(f) for f in clip] == list(range(22, 38, 2))


def test_video_shorter_than_window_still_yields(tmp_path: Path) -> None:
    path = _write_video(tmp_path / "short.mp4", 5)
    ((ts, clip),) = iter_keyframe_clips(path, [2 / FPS], SAMPLING)
    assert [_read_index(f) for f in clip] == clip_frame_indices(2, 5, SAMPLING).tolist() == [0, 0, 0, 0, 2, 4, 4, 4]


def test_no_timestamps_yields_nothing(video: Path) -> None:
    assert list(iter_keyframe_clips(video, [], SAMPLING)) == []


def test_video_info(video: Path, tmp_path: Path) -> None:
    assert video_info(video) == (120, pytest.approx(30.0), HEIGHT, WIDTH)
    # Matroska does not store a frame count: video_info falls back to counting decoded frames
    mkv = _write_video(tmp_path / "clip.mkv", 37)
    assert video_info(mkv) == (37, pytest.approx(30.0), HEIGHT, WIDTH)


@pytest.mark.parametrize(
    ("faststart", "keep"),
    [(False, 0.5), (True, 0.5), (True, 0.9)],
    ids=["moov-at-end-half", "moov-first-half", "moov-first-90pc"],
)
def test_truncated_file_raises_naming_the_file(video: Path, tmp_path: Path, faststart: bool, keep: float) -> None:
    """Moov at the end: cannot open. Moov first: the decoder fails, or decodes fewer frames than declared."""
    source = video if not faststart else _write_video(tmp_path / "fs.mp4", 120, faststart=True)
    data = source.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(VideoDecodeError, match="cut.mp4"):
        list(iter_keyframe_clips(cut, [3.5], SAMPLING))


def test_garbage_and_missing_files_raise(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="garbage.mp4"):
        list(iter_keyframe_clips(garbage, [0.0], SAMPLING))
    with pytest.raises(VideoDecodeError, match="garbage.mp4"):
        video_info(garbage)
    with pytest.raises(VideoDecodeError, match="missing.mp4"):
        list(iter_keyframe_clips(tmp_path / "missing.mp4", [0.0], SAMPLING))


def test_sampling_validation() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        ClipSampling(canvas=(100, 160))
    with pytest.raises(ValueError, match="frame_stride"):
        ClipSampling(frame_stride=0)
    # the slow pathway's alpha is the backbone's (SlowFastConfig.alpha), checked against the clip there
    with pytest.raises(ValueError, match="multiple of the temporal strides"):
        check_clip_size(build_backbone("slowfast", config=SlowFastConfig.small()), 10, 128, 160)


@pytest.mark.parametrize(
    ("height", "width", "valid_hw", "scale"),
    [
        (48, 64, (112, 149), 112 / 48),  # 4:3: short side to 112
        (36, 64, (90, 160), 160 / 64),  # 16:9: long side capped at the canvas width
        (64, 36, (128, 72), 128 / 64),  # portrait: long side capped at the canvas height
        (112, 160, (112, 160), 1.0),  # already the right size: no resize
    ],
)
def test_preprocess_shapes_padding_and_extent(height: int, width: int, valid_hw: tuple[int, int], scale: float) -> None:
    sampling = ClipSampling()
    clip = np.full((16, height, width, 3), 200, dtype=np.uint8)
    clip[..., 1] = 30
    tensor, hw, got_scale = preprocess_clip(clip, sampling)
    assert tensor.shape == (3, 16, 128, 160) and tensor.dtype == torch.float32
    assert hw == valid_hw and got_scale == pytest.approx(scale)
    h, w = hw
    valid = tensor[:, :, :h, :w]
    expected = torch.tensor([(200 / 255 - 0.45) / 0.225, (30 / 255 - 0.45) / 0.225, (200 / 255 - 0.45) / 0.225])
    torch.testing.assert_close(valid.mean(dim=(1, 2, 3)), expected, atol=1e-4, rtol=0)
    assert valid.std(dim=(1, 2, 3)).max() < 1e-4  # a flat image stays flat through antialiased resizing
    assert tensor[:, :, h:].abs().sum() == 0 and tensor[:, :, :, w:].abs().sum() == 0


def test_preprocess_keeps_geometry() -> None:
    """A bright square lands at the scaled position on the canvas (boxes map by multiplying with scale)."""
    clip = np.zeros((2, 48, 64, 3), dtype=np.uint8)
    clip[:, 12:24, 32:48] = 255
    tensor, _, scale = preprocess_clip(clip, ClipSampling())
    bright = (tensor[0, 0] > 0).nonzero()
    y0, x0 = bright.min(dim=0).values.tolist()
    y1, x1 = (bright.max(dim=0).values + 1).tolist()
    assert abs(y0 - 12 * scale) <= 1.5 and abs(y1 - 24 * scale) <= 1.5
    assert abs(x0 - 32 * scale) <= 1.5 and abs(x1 - 48 * scale) <= 1.5


def test_in_background_joins_its_thread_when_the_consumer_stops_early() -> None:
    """An error or Ctrl-C in the consumer must not leave the producer running into interpreter shutdown."""
    import threading

    from stages.data.video import in_background

    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    before = threading.active_count()
    stream = in_background(endless(), maxsize=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert closed.is_set() and threading.active_count() == before
    with pytest.raises(ZeroDivisionError):
        list(in_background((1 // x for x in (1, 0)), maxsize=1))
    assert threading.active_count() == before


def test_large_frames_are_scaled_down_while_decoding_and_sized_from_the_source(video: Path) -> None:
    """A frame over max_decode_side is decoded small (bounded memory); the clip still has the source's geometry."""
    full = ClipSampling(num_frames=8, frame_stride=2, short_side=32, canvas=(32, 64))
    small = replace(full, max_decode_side=32)  # the 64 x 48 test video is "large" for this limit
    ((_, big),) = iter_keyframe_clips(video, [1.0], full)
    ((_, little),) = iter_keyframe_clips(video, [1.0], small)
    assert big.shape[1:3] == (HEIGHT, WIDTH) and little.shape[1:3] == (24, 32)
    doubled = little.repeat(2, axis=1).repeat(2, axis=2)  # back to 48 x 64 to read the frame codes
    assert [_read_index(f) for f in big] == [_read_index(f) for f in doubled]  # the same frames, only smaller
    reference, valid, _ = preprocess_clip(big, full)
    scaled, valid_small, _ = preprocess_clip(little, small, source_hw=(HEIGHT, WIDTH))
    assert valid == valid_small == (32, 43)  # sized from the source, as the manifest computes it
    assert scaled.shape == reference.shape
    assert float((scaled - reference).abs().mean()) < 0.1
