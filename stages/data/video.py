"""Decode clips around keyframes with PyAV and turn them into backbone input.

Extraction touches every keyframe of every video once, and an AVA video is 15 minutes at 30 fps, so a video is
decoded exactly once, front to back, keeping only the frames that some still-pending clip needs. Frame indices
follow PySlowFast's AVA loader (``get_sequence``): the clip is centred on the keyframe and indices outside the
video are clamped, so the first/last frame repeats.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import av
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cache_spec.errors import InputError

logger = logging.getLogger(__name__)

# A container that declares N frames but decodes fewer than this fraction of them (minus a little slack for
# edit lists and decoder delay) is treated as truncated rather than silently yielding clamped clips.
_TRUNCATION_SLACK_FRACTION = 0.02
_TRUNCATION_SLACK_FRAMES = 2


class ClipsFailedError(InputError):
    """Clips could not be built (missing or broken videos, keyframes outside their video) and were not allowed to."""


class VideoDecodeError(InputError, RuntimeError):
    """A video could not be opened or decoded; the message names the file and the step that failed."""


@dataclass(frozen=True)
class ClipSampling:
    """How a clip is sampled around a keyframe and laid out for the backbone (part of the extraction variant)."""

    num_frames: int = 16
    frame_stride: int = 2
    short_side: int = 112
    canvas: tuple[int, int] = (128, 160)
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    max_decode_side: int = 1280  # frames with a longer side are scaled down as they are decoded (bounded memory)

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.frame_stride < 1 or self.short_side < 1:
            raise ValueError(f"num_frames, frame_stride and short_side must be >= 1: {self}")
        if len(self.canvas) != 2 or any(c <= 0 or c % 32 for c in self.canvas):
            raise ValueError(f"canvas {self.canvas} must be two positive multiples of 32 (backbone stride)")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError(f"mean/std need three values and std > 0: {self.mean}, {self.std}")

    @property
    def window(self) -> int:
        """Source frames spanned by one clip (T * tau), the PySlowFast ``seq_len``."""
        return self.num_frames * self.frame_stride


def clip_frame_indices(keyframe_index: int, num_video_frames: int, sampling: ClipSampling) -> np.ndarray:
    """Source frame indices of the fast pathway for one keyframe, clamped to the video.

    PySlowFast AVA convention: ``range(centre - T*tau//2, centre + T*tau//2, tau)``, then indices below 0 become 0
    and indices past the end become ``n - 1`` (edge frames repeat).
    """
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
    return np.clip(_unclamped_indices(keyframe_index, sampling), 0, num_video_frames - 1)


def _unclamped_indices(keyframe_index: int, sampling: ClipSampling) -> np.ndarray:
    start = keyframe_index - sampling.window // 2
    return start + np.arange(sampling.num_frames, dtype=np.int64) * sampling.frame_stride


@dataclass(frozen=True)
class VideoSource:
    """Where one video's frames are: a file FFmpeg reads (any container), or a folder of numbered images.

    Image sequences (PySlowFast's AVA ``frames/<id>/<id>_%06d.jpg``) give ``path`` as the printf pattern and
    their ``frame_rate``; ``time_offset_s`` is the data set's timestamp of the first frame (AVA's 15-minute cuts
    start at 900 s), so keyframe ``t`` is frame ``round((t - time_offset_s) * fps)``.
    """

    path: Path
    frame_rate: float | None = None  # image sequences only: files carry no rate
    first_number: int = 1  # image sequences: the number of the first file
    time_offset_s: float = 0.0

    @property
    def is_sequence(self) -> bool:
        return self.frame_rate is not None

    def __str__(self) -> str:
        return str(self.path)

    def frame_count(self) -> int:
        """Image sequences: the files present from ``first_number`` on without a gap (no decoding)."""
        n = 0
        while Path(str(self.path) % (self.first_number + n)).is_file():
            n += 1
        return n


def _source(video: Path | str | VideoSource) -> VideoSource:
    return video if isinstance(video, VideoSource) else VideoSource(Path(video))


def _open(source: VideoSource) -> av.container.InputContainer:
    try:
        if source.is_sequence:
            options = {"framerate": f"{source.frame_rate:g}", "start_number": str(source.first_number)}
            return av.open(str(source.path), mode="r", format="image2", options=options)
        return av.open(str(source.path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoDecodeError(f"{source}: cannot open video: {e}") from e


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoDecodeError(f"{path}: no video stream")
    return container.streams.video[0]


def _stream_fps(stream: av.video.stream.VideoStream, path: Path) -> float:
    rate: Fraction | None = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise VideoDecodeError(f"{path}: container does not give a frame rate")
    return float(rate)


def frame_size(video: Path | str | VideoSource) -> tuple[int, int]:
    """(height, width) of the frames in the file, from the stream header alone."""
    source = _source(video)
    container = _open(source)
    try:
        context = _video_stream(container, source.path).codec_context
        return int(context.height), int(context.width)
    finally:
        container.close()


def video_info(video: Path | str | VideoSource) -> tuple[int, float, int, int]:
    """(num_frames, fps, height, width) from stream metadata, counting decoded frames when no count is declared.

    Image sequences count their files instead (an AVA movie is 27k JPEGs; decoding them to count would be slow).
    """
    source = _source(video)
    path = source.path
    container = _open(source)
    try:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream, path)
        height, width = stream.codec_context.height, stream.codec_context.width
        num_frames = source.frame_count() if source.is_sequence else int(stream.frames or 0)
        if num_frames <= 0:
            logger.debug("%s: no frame count in the container, counting decoded frames", path)
            try:
                num_frames = sum(1 for _ in container.decode(stream))
            except av.FFmpegError as e:
                raise VideoDecodeError(f"{path}: decoding failed while counting frames: {e}") from e
        return num_frames, fps, int(height), int(width)
    finally:
        container.close()


@dataclass
class _PendingClip:
    timestamp: float
    key: int  # the keyframe's frame index
    indices: np.ndarray  # clamped below at 0, not yet above (the frame count is learned at EOF)

    @property
    def last_needed(self) -> int:
        return int(self.indices[-1])

    @property
    def first_needed(self) -> int:
        return int(self.indices[0])


def _decoded_size(height: int, width: int, max_side: int) -> tuple[int, int] | None:
    """The (h, w) to decode to when the frame is larger than ``max_side``, else None (decode as is)."""
    if max(height, width) <= max_side:
        return None
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def iter_keyframe_clips(
    video: Path | str | VideoSource,
    timestamps_s: Sequence[float],
    sampling: ClipSampling,
    time_offset_s: float | None = None,
    on_outside: Callable[[float, str], None] | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(timestamp, uint8 [T_f, H, W, 3] RGB)`` for each keyframe, in timestamp order, decoding once.

    The keyframe's frame index is ``round((timestamp - time_offset_s) * fps)`` counted in decode order
    (``time_offset_s`` defaults to the source's). Only frames that a pending clip needs are converted to RGB and
    kept, so memory is bounded by one clip window. Clips whose window reaches past either end repeat the edge
    frame, as PySlowFast's loader does; a keyframe outside the video is not a clip at all (usually a wrong time
    offset): it is not yielded and ``on_outside(timestamp, message)`` is called (without it, the message is
    logged as an error). Raises ``VideoDecodeError`` naming the file if it cannot be opened, a packet fails to
    decode, or fewer frames decode than the container declares (truncation); clips yielded before are correct.

    Frames whose longer side exceeds ``sampling.max_decode_side`` come out scaled down to it (aspect kept), so a
    4K source costs no more memory than a 1280-pixel one; :func:`preprocess_clip` sizes them from the source.
    """
    source = _source(video)
    offset = source.time_offset_s if time_offset_s is None else time_offset_s
    path = source.path
    order = sorted(range(len(timestamps_s)), key=lambda i: timestamps_s[i])
    if not order:
        return

    def outside(ts: float, key: int, frames: int | str) -> None:
        message = (
            f"{path}: keyframe {ts:g} s is frame {key}, outside the video's {frames} frames "
            f"(with a time offset of {offset:g} s: check dataset.time_offset_s; AVA's 15-minute cuts start at 900 s)"
        )
        if on_outside is None:
            logger.error("%s", message)
        else:
            on_outside(ts, message)

    container = _open(source)
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        fps = _stream_fps(stream, path)
        declared = source.frame_count() if source.is_sequence else int(stream.frames or 0)
        pending: list[_PendingClip] = []
        for i in order:
            ts = float(timestamps_s[i])
            key = round((ts - offset) * fps)
            if key < 0 or (declared and key >= declared):
                outside(ts, key, declared or "?")
                continue
            pending.append(_PendingClip(ts, key, np.maximum(_unclamped_indices(key, sampling), 0)))
        if pending:
            size = _decoded_size(stream.codec_context.height, stream.codec_context.width, sampling.max_decode_side)
            yield from _decode_and_emit(container, stream, path, pending, declared, outside, size)
    finally:
        container.close()


def _decode_and_emit(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    path: Path,
    pending: list[_PendingClip],
    declared: int,
    outside: Callable[[float, int, int], None],
    size: tuple[int, int] | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Run the decoder front to back, emitting each clip as soon as its last frame has been decoded."""

    def rgb(frame: av.VideoFrame) -> np.ndarray:
        if size is None:
            return frame.to_ndarray(format="rgb24")
        return frame.reformat(width=size[1], height=size[0], format="rgb24", interpolation="AREA").to_ndarray()

    buffer: dict[int, np.ndarray] = {}
    needed: set[int] = set()
    for clip in pending:
        needed.update(int(i) for i in clip.indices)
    head = 0  # next pending clip
    index = -1
    last_frame: av.VideoFrame | None = None
    try:
        for index, frame in enumerate(container.decode(stream)):
            last_frame = frame
            if index in needed:
                buffer[index] = rgb(frame)
            while head < len(pending) and pending[head].last_needed <= index:
                clip = pending[head]
                yield clip.timestamp, np.stack([buffer[int(i)] for i in clip.indices])
                head += 1
                _trim(buffer, pending[head].first_needed if head < len(pending) else index + 1)
            if head == len(pending):
                return  # nothing left to emit: stop decoding instead of reading the rest of the file
    except av.FFmpegError as e:
        raise VideoDecodeError(f"{path}: decoding failed at frame {index + 1}: {e}") from e

    num_frames = index + 1
    if last_frame is None:
        raise VideoDecodeError(f"{path}: no frames could be decoded")
    slack = max(_TRUNCATION_SLACK_FRAMES, math.ceil(declared * _TRUNCATION_SLACK_FRACTION))
    if declared and num_frames < declared - slack:
        raise VideoDecodeError(f"{path}: truncated or corrupt, decoded {num_frames} of {declared} declared frames")
    if num_frames - 1 not in buffer:
        buffer[num_frames - 1] = rgb(last_frame)
    for clip in pending[head:]:
        if clip.key >= num_frames:  # the container declared no frame count, so this shows only now
            outside(clip.timestamp, clip.key, num_frames)
            continue
        indices = np.minimum(clip.indices, num_frames - 1)
        yield clip.timestamp, np.stack([buffer[int(i)] for i in indices])


def _trim(buffer: dict[int, np.ndarray], keep_from: int) -> None:
    """Drop buffered frames that no remaining clip can need (pending clips are sorted, so their starts rise)."""
    for i in [i for i in buffer if i < keep_from]:
        del buffer[i]


def _resized_hw(height: int, width: int, sampling: ClipSampling) -> tuple[tuple[int, int], float]:
    """Short side to ``short_side``, shrunk further if the long side would overflow the canvas."""
    canvas_h, canvas_w = sampling.canvas
    scale = min(sampling.short_side / min(height, width), canvas_h / height, canvas_w / width)
    new_h = min(canvas_h, max(1, round(height * scale)))
    new_w = min(canvas_w, max(1, round(width * scale)))
    return (new_h, new_w), scale


def preprocess_clip(
    clip: np.ndarray, sampling: ClipSampling, source_hw: tuple[int, int] | None = None
) -> tuple[torch.Tensor, tuple[int, int], float]:
    """uint8 ``[T, H, W, 3]`` -> normalised float32 ``[3, T, canvas_h, canvas_w]``, padded with zeros bottom/right.

    ``source_hw``: the frame size in the file when the decoder already scaled the frames down
    (``max_decode_side``); the output is sized from it, so it matches the manifest's geometry exactly.

    Returns ``(tensor, valid_hw, scale)``: ``valid_hw`` is the resized (h, w) before padding and ``scale`` the
    resize factor (resized / original). Boxes in original pixels map onto the canvas as ``box * scale``; the exact
    per-axis factor is ``valid_hw / (H, W)`` (they differ by under half a pixel from rounding). Padding is
    applied after normalisation so padded pixels are exactly zero, as a zero-padded conv input expects.
    """
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
        raise ValueError(f"expected uint8 [T, H, W, 3], got {clip.dtype} {clip.shape}")
    _, height, width, _ = clip.shape
    source_h, source_w = source_hw or (height, width)
    (new_h, new_w), scale = _resized_hw(source_h, source_w, sampling)
    frames = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float().div_(255.0)
    if (new_h, new_w) != (height, width):
        frames = F.interpolate(frames, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(sampling.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(sampling.std, dtype=torch.float32).view(1, 3, 1, 1)
    frames = (frames - mean) / std
    canvas_h, canvas_w = sampling.canvas
    frames = F.pad(frames, (0, canvas_w - new_w, 0, canvas_h - new_h), value=0.0)
    return frames.permute(1, 0, 2, 3).contiguous(), (new_h, new_w), scale


def decode_clips(
    clips: pd.DataFrame,
    videos: Callable[[str], VideoSource],
    sampling: ClipSampling,
    flip: bool = False,
    unit: str = "seconds",
) -> Iterator[tuple[int, torch.Tensor | None, str]]:
    """``(clip_index, preprocessed clip or None, error)`` for every row of ``clips``, decoding each video once.

    ``videos`` maps a video id to its source (``DataLayout.video``). A video that is missing or fails to decode
    yields None (with the error) for its clips not yet produced, so one bad file costs its own clips only; a
    keyframe outside its video yields None with its own message.
    """
    for video, group in clips.groupby("video_id", sort=False):
        indices = group["clip_index"].to_numpy()
        done: set[int] = set()
        ts_to_index: dict[float, int] = {}
        outside: dict[float, str] = {}
        error = f"{video}: no clip decoded"
        try:
            source = videos(str(video))
            seconds = group["timestamp"].to_numpy(np.float64)
            if unit == "frames":  # 1-based frame numbers of the dense data sets: no time offset
                seconds = (seconds - 1) / video_info(source)[1]
                source = VideoSource(source.path, source.frame_rate, source.first_number, 0.0)
            ts_to_index = dict(zip(seconds.tolist(), indices.tolist(), strict=True))
            # the source's frame size as the manifest measured it (the clip is sized from it); else ask the file
            size = (
                (int(group["frame_h"].iloc[0]), int(group["frame_w"].iloc[0]))
                if "frame_h" in group and group["frame_h"].iloc[0] > 0
                else frame_size(source)
            )
            for ts, frames in iter_keyframe_clips(source, list(ts_to_index), sampling, on_outside=outside.__setitem__):
                done.add(ts_to_index[ts])
                if flip:
                    frames = frames[:, :, ::-1]
                yield ts_to_index[ts], preprocess_clip(frames, sampling, size)[0], ""
        except VideoDecodeError as err:
            logger.warning("skipping the rest of %s: %s", video, err)
            error = str(err)
        problems = {ts_to_index[ts]: message for ts, message in outside.items()}
        for index in indices.tolist():
            if index not in done:
                yield index, None, problems.get(index, error)


T = TypeVar("T")


def in_background(items: Iterator[T], maxsize: int) -> Iterator[T]:
    """Run a generator in a thread, handing items over through a bounded queue (errors re-raised here).

    When the consumer stops early (an error, Ctrl-C, ``close()``), the producer is told to stop and joined before
    this generator finishes, so no thread is left decoding while the interpreter shuts down.
    """
    q: queue.Queue = queue.Queue(maxsize=maxsize)
    end = object()
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(err)
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        put(end)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
