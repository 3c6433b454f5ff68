"""The configuration and the immutable plan types of a synthetic video, the bottom layer of the package.

Everything else reads these records and none of it writes them after they are built: a :class:`Scene` is the
whole answer for one video (tracks, objects, events and the tables derived from them), and the rendering,
labelling and detector modules are functions of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

SPLITS = ("train", "val")

# Arm modes of the front arm.
ARM_SWING, ARM_CARRY, ARM_REACH, ARM_WINDUP, ARM_TOUCH = 0, 1, 2, 3, 4

Color = tuple[int, int, int]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class SynthConfig:
    """Size and difficulty of the synthetic set; every field is a DVC param of the ``synth`` stage."""

    seed: int = 0
    num_videos_train: int = 24
    num_videos_val: int = 8
    duration_s: int = 12
    fps: int = 16
    width: int = 160
    height: int = 120
    min_actors: int = 2
    max_actors: int = 4
    excluded_fraction: float = 0.03
    detector_miss_rate: float = 0.05
    detector_false_positives_per_frame: float = 0.3
    detector_jitter: float = 0.04

    def __post_init__(self) -> None:
        if self.num_videos_train < 0 or self.num_videos_val < 0:
            raise ValueError("video counts must be >= 0")
        if self.duration_s < 3 or self.fps < 4:
            raise ValueError("need duration_s >= 3 (keyframes at 1..duration_s-1) and fps >= 4")
        if self.width % 2 or self.height % 2 or self.width < 64 or self.height < 48:
            raise ValueError("width and height must be even (yuv420p) and at least 64x48")
        if not 1 <= self.min_actors <= self.max_actors:
            raise ValueError("need 1 <= min_actors <= max_actors")
        for name in ("excluded_fraction", "detector_miss_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.detector_false_positives_per_frame < 0 or self.detector_jitter < 0:
            raise ValueError("false-positive rate and jitter must be >= 0")


class Timeline(NamedTuple):
    """Frames and one-second slots of a video.

    Slot k covers [k - 0.5 s, k + 0.5 s): poses change only at slot boundaries, so a keyframe's pose holds over
    at least the central second of its window.
    """

    fps: int
    duration_s: int
    num_frames: int
    num_slots: int
    slot_of_frame: np.ndarray  # [F] int64

    @classmethod
    def of(cls, config: SynthConfig) -> Timeline:
        """The timeline every video of ``config`` shares."""
        num_frames = config.duration_s * config.fps
        slot_of_frame = np.floor(np.arange(num_frames) / config.fps + 0.5).astype(np.int64)
        return cls(config.fps, config.duration_s, num_frames, config.duration_s + 1, slot_of_frame)

    def frames_of_slots(self, first: int, last: int) -> tuple[int, int]:
        """First and last frame of slots [first, last]."""
        idx = np.flatnonzero((self.slot_of_frame >= first) & (self.slot_of_frame <= last))
        return int(idx[0]), int(idx[-1])


class Shape(NamedTuple):
    """A filled primitive in pixel coordinates (pixel (i, j) covers [j, j+1) x [i, i+1))."""

    # "ellipse" (cx, cy, rx, ry) | "capsule" (x0, y0, x1, y1, r) | "rect" (x0, y0, x1, y1) | "diamond" (cx, cy, r)
    kind: str
    params: tuple[float, ...]
    color: Color
    in_box: bool = True

    def bbox(self) -> Box:
        """Axis-aligned bounds (x1, y1, x2, y2): what painting scans and what boxes are made of."""
        p = self.params
        if self.kind == "ellipse":
            return p[0] - p[2], p[1] - p[3], p[0] + p[2], p[1] + p[3]
        if self.kind == "capsule":
            return (
                min(p[0], p[2]) - p[4],
                min(p[1], p[3]) - p[4],
                max(p[0], p[2]) + p[4],
                max(p[1], p[3]) + p[4],
            )
        if self.kind == "diamond":
            return p[0] - p[2], p[1] - p[2], p[0] + p[2], p[1] + p[2]
        return p[0], p[1], p[2], p[3]


def union_box(shapes: list[Shape]) -> Box:
    """Tight box of the shapes that count towards an object's box (``in_box``)."""
    boxes = np.array([s.bbox() for s in shapes if s.in_box])
    return (
        float(boxes[:, 0].min()),
        float(boxes[:, 1].min()),
        float(boxes[:, 2].max()),
        float(boxes[:, 3].max()),
    )


@dataclass(frozen=True)
class ActorLook:
    """Colours and size of one actor; distinct hues per actor so tracking and relations are unambiguous."""

    body: Color
    limbs: Color
    skin: Color
    height: float  # standing height in pixels


@dataclass(frozen=True, eq=False)
class ActorTrack:
    """Per-frame state of one actor: everything rendering and the labelling rules read.

    Its sprite and box at a frame are :func:`stages.data.synth.sprites.actor_shapes` and ``actor_box``.
    """

    person_id: int
    look: ActorLook
    ground_y: float
    x: np.ndarray  # [F] float, feet centre
    pose: np.ndarray  # [F] action id of the pose
    facing: np.ndarray  # [F] +1 right, -1 left
    phase: np.ndarray  # [F] leg cycle phase in radians
    arm: np.ndarray  # [F] front-arm mode (ARM_*)
    talking: np.ndarray  # [F] bool: shows the speaking cue
    listening: np.ndarray  # [F] bool: partner is talking to it (no cue of its own)
    gaze: np.ndarray  # [F] bool: shows the gaze (eye) cue


@dataclass(frozen=True, eq=False)
class PropTrack:
    """A small object: held by an actor (at its front hand) or flying at ``free_xy``; invisible if neither."""

    kind: str  # "ellipse" | "diamond" | "rect"
    color: Color
    radius: float
    holder: np.ndarray  # [F] int, actor index or -1
    free_xy: np.ndarray  # [F, 2] float, NaN when not free


@dataclass(frozen=True)
class Clutter:
    """A static background object; detector false positives land on these."""

    kind: str
    shapes: tuple[Shape, ...]

    def box(self) -> Box:
        """Pixel box of the whole object, where the detector puts its false positives."""
        return union_box(list(self.shapes))


@dataclass(frozen=True)
class Event:
    """A short action of one actor over frames [start, end]; labelled where the window contains all of it."""

    action_id: int
    actor: int
    start: int
    end: int


@dataclass(frozen=True, eq=False)
class Scene:
    """One video's script: background, tracks, events, the AVA tables (all keyframes) and the dense tables.

    ``dense_annotations`` has one row per (labelled frame, actor, action) with a 0-based ``frame`` and pixel
    boxes; ``dense_predicted_boxes`` is in the AVA predicted-box layout with the 1-based frame as timestamp.
    """

    video_id: str
    split: str
    width: int
    height: int
    fps: int
    num_frames: int
    background: np.ndarray  # [H, W, 3] uint8, clutter included
    actors: list[ActorTrack]
    props: list[PropTrack]
    clutter: list[Clutter]
    events: list[Event]
    annotations: pd.DataFrame = field(repr=False)
    predicted_boxes: pd.DataFrame = field(repr=False)
    dense_annotations: pd.DataFrame = field(repr=False)
    dense_predicted_boxes: pd.DataFrame = field(repr=False)

    @property
    def keyframes(self) -> list[int]:
        """AVA timestamps (seconds); the keyframe of second t is frame t * fps."""
        return list(range(1, self.num_frames // self.fps))

    @property
    def labelled_frames(self) -> range:
        """0-based frames with dense labels; see :func:`labelled_frames`."""
        return labelled_frames(self.num_frames, self.fps)


def labelled_frames(num_frames: int, fps: int) -> range:
    """Frames whose +-1 s window lies in the video: from the first to the last keyframe (seconds 1..T-1).

    The last keyframe's window ends on frame ``num_frames``, one past the video, which the keyframe rules have
    always clipped away; it is kept so that every keyframe has a dense counterpart.
    """
    return range(fps, num_frames - fps + 1)
