"""The embedded default data set: small synthetic AVA-layout videos, deterministic from a seed.

The point is a data set that exercises the whole pipeline in minutes on a CPU and that has a real answer for
every kind of head: poses are visible in an actor's own crop, object interactions need the object next to it,
and person interactions (give/take, talk/listen, watch) are only decidable from *other* actors or from the
direction of change over time. Labels follow from the scene script by rules that hold over the whole clip
window [t-1 s, t+1 s] around a keyframe, so they are exactly as learnable as the pixels make them.

Scripts (``make_scenes``) are separate from pixels (``render``), so labels and counts can be computed and
tested without encoding any video.

The same videos are also labelled densely (every frame, ACT/MOC ``gt.pkl`` as MultiSports and UCF101-24 ship
it, under ``dense/``): one function (``_VideoScript.labels_at``) decides an actor's labels for the window around
any frame, so keyframe and per-frame labels cannot drift apart, and the per-frame detector draws from its own
random stream, so adding the dense files leaves the AVA files byte-identical.
"""

from __future__ import annotations

import colorsys
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
import pandas as pd
from tqdm import tqdm

from stages.data.act import DenseDataset, dense_dataset_from_dict, write_dense_dataset
from stages.data.ava import (
    OBJECT,
    PERSON,
    POSE,
    LabelMap,
    write_annotations,
    write_excluded_timestamps,
    write_label_map,
    write_predicted_boxes,
)

logger = logging.getLogger(__name__)

# Real AVA ids and names, so AVA's category ranges (1-14 pose, 15-63 object, 64-80 person) hold.
CROUCH, RUN, STAND, WALK = 3, 10, 12, 14
CARRY, THROW, TOUCH = 17, 58, 59
GIVE, LISTEN, TAKE, TALK, WATCH = 65, 74, 78, 79, 80
POSES = (STAND, WALK, RUN, CROUCH)

SYNTH_CLASSES = LabelMap(
    names={
        CROUCH: "crouch/kneel",
        RUN: "run/jog",
        STAND: "stand",
        WALK: "walk",
        CARRY: "carry/hold (an object)",
        THROW: "throw",
        TOUCH: "touch (an object)",
        GIVE: "give/serve (an object) to (a person)",
        LISTEN: "listen to (a person)",
        TAKE: "take (an object) from (a person)",
        TALK: "talk to (e.g., self, a person, a group)",
        WATCH: "watch (a person)",
    },
    categories={
        CROUCH: POSE,
        RUN: POSE,
        STAND: POSE,
        WALK: POSE,
        CARRY: OBJECT,
        THROW: OBJECT,
        TOUCH: OBJECT,
        GIVE: PERSON,
        LISTEN: PERSON,
        TAKE: PERSON,
        TALK: PERSON,
        WATCH: PERSON,
    },
)

SPLITS = ("train", "val")

# Scene-script probabilities. Stand dominates and the one-keyframe events (throw, give, take) are rare, which
# gives the long tail that decoupling / re-balancing heads are meant for.
_POSE_WEIGHTS = {STAND: 0.5, WALK: 0.26, RUN: 0.1, CROUCH: 0.14}
_PAIR_KINDS = {"talk": 0.3, "give": 0.25, "none": 0.45}
_P_TOUCH = 0.3
_P_THROW = 0.15
_P_CARRY = 0.25
_P_GAZE = 0.6
# One kind of rare episode is forced per video, in turn, so that even a small split has every class.
_FORCED = ("give", "throw", "talk", "touch")

# Sprite geometry, as fractions of an actor's standing height.
_SPEED = {STAND: 0.0, CROUCH: 0.0, WALK: 0.5, RUN: 1.5}  # heights per second
_CADENCE = {STAND: 0.0, CROUCH: 0.0, WALK: 1.3, RUN: 2.4}  # leg cycles per second
_STRIDE = {STAND: 0.0, CROUCH: 0.0, WALK: 0.13, RUN: 0.24}
_TALK_GAP, _GIVE_GAP = 0.95, 0.78
_WATCH_MIN_OFFSET = 0.3

# Arm modes of the front arm.
ARM_SWING, ARM_CARRY, ARM_REACH, ARM_WINDUP, ARM_TOUCH = 0, 1, 2, 3, 4

Color = tuple[int, int, int]


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


# ----------------------------------------------------------------------------------------------- shapes


class Shape(NamedTuple):
    """A filled primitive in pixel coordinates (pixel (i, j) covers [j, j+1) x [i, i+1))."""

    # "ellipse" (cx, cy, rx, ry) | "capsule" (x0, y0, x1, y1, r) | "rect" (x0, y0, x1, y1) | "diamond" (cx, cy, r)
    kind: str
    params: tuple[float, ...]
    color: Color
    in_box: bool = True

    def bbox(self) -> tuple[float, float, float, float]:
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


def _paint(img: np.ndarray, shape: Shape) -> None:
    """Fill one shape into an HxWx3 image in place, testing pixel centres with numpy over its bounding box."""
    bx0, by0, bx1, by1 = shape.bbox()
    height, width = img.shape[:2]
    ix0, iy0 = max(0, math.floor(bx0)), max(0, math.floor(by0))
    ix1, iy1 = min(width, math.ceil(bx1)), min(height, math.ceil(by1))
    if ix1 <= ix0 or iy1 <= iy0:
        return
    ys = np.arange(iy0, iy1, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(ix0, ix1, dtype=np.float32)[None, :] + 0.5
    p = shape.params
    if shape.kind == "ellipse":
        mask = ((xs - p[0]) / p[2]) ** 2 + ((ys - p[1]) / p[3]) ** 2 <= 1.0
    elif shape.kind == "capsule":
        dx, dy = p[2] - p[0], p[3] - p[1]
        t = np.clip(((xs - p[0]) * dx + (ys - p[1]) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        mask = (xs - p[0] - t * dx) ** 2 + (ys - p[1] - t * dy) ** 2 <= p[4] ** 2
    elif shape.kind == "diamond":
        mask = np.abs(xs - p[0]) + np.abs(ys - p[1]) <= p[2]
    else:
        mask = np.ones((iy1 - iy0, ix1 - ix0), dtype=bool)
    img[iy0:iy1, ix0:ix1][mask] = shape.color


def _union_box(shapes: list[Shape]) -> tuple[float, float, float, float]:
    boxes = np.array([s.bbox() for s in shapes if s.in_box])
    return (
        float(boxes[:, 0].min()),
        float(boxes[:, 1].min()),
        float(boxes[:, 2].max()),
        float(boxes[:, 3].max()),
    )


def _hsv(h: float, s: float, v: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


# ----------------------------------------------------------------------------------------------- scene script


@dataclass(frozen=True)
class ActorLook:
    """Colours and size of one actor; distinct hues per actor so tracking and relations are unambiguous."""

    body: Color
    limbs: Color
    skin: Color
    height: float  # standing height in pixels


@dataclass(frozen=True, eq=False)
class ActorTrack:
    """Per-frame state of one actor: everything ``render`` and the labelling rules read."""

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

    def shapes(self, f: int) -> tuple[list[Shape], tuple[float, float]]:
        """The sprite at frame ``f`` (drawing order) and the front-hand point where a held object sits."""
        return _actor_shapes(self, f)

    def box(self, f: int) -> tuple[float, float, float, float]:
        """Tight pixel box of the body (speech marks and held objects excluded)."""
        return _union_box(self.shapes(f)[0])


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

    def box(self) -> tuple[float, float, float, float]:
        return _union_box(list(self.shapes))


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
        """0-based frames with dense labels; see :func:`_labelled_frames`."""
        return _labelled_frames(self.num_frames, self.fps)


def _labelled_frames(num_frames: int, fps: int) -> range:
    """Frames whose +-1 s window lies in the video: from the first to the last keyframe (seconds 1..T-1).

    The last keyframe's window ends on frame ``num_frames``, one past the video, which the keyframe rules have
    always clipped away; it is kept so that every keyframe has a dense counterpart.
    """
    return range(fps, num_frames - fps + 1)


def _actor_shapes(actor: ActorTrack, f: int) -> tuple[list[Shape], tuple[float, float]]:
    h, g, x = actor.look.height, actor.ground_y, float(actor.x[f])
    s, pose, arm = int(actor.facing[f]), int(actor.pose[f]), int(actor.arm[f])
    phase = float(actor.phase[f])
    leg_r, arm_r, head_r = 0.055 * h, 0.045 * h, 0.12 * h
    limbs, body = actor.look.limbs, actor.look.body
    shapes: list[Shape] = []
    if pose == CROUCH:
        head = (x + s * 0.07 * h, g - 0.66 * h + head_r)
        hip, shoulder = (x, g - 0.25 * h), (x + s * 0.04 * h, g - 0.47 * h)
        torso = Shape("ellipse", (x + s * 0.02 * h, g - 0.37 * h, 0.17 * h, 0.15 * h), body)
        knee_f, foot_f = (x + s * 0.17 * h, g - 0.22 * h), (x + s * 0.19 * h, g - 0.03 * h)
        knee_b, foot_b = (x - s * 0.04 * h, g - 0.04 * h), (x - s * 0.22 * h, g - 0.04 * h)
        shapes += [
            Shape("capsule", (*hip, *knee_b, leg_r), limbs),
            Shape("capsule", (*knee_b, *foot_b, leg_r), limbs),
        ]
        shapes += [
            Shape("capsule", (*hip, *knee_f, leg_r), limbs),
            Shape("capsule", (*knee_f, *foot_f, leg_r), limbs),
        ]
        swing = 0.0
    else:
        lean = s * 0.08 * h if pose == RUN else 0.0
        head = (x + lean, g - h + head_r)
        hip, shoulder = (x, g - 0.44 * h), (x + 0.8 * lean, g - 0.77 * h)
        torso = Shape("ellipse", (x + 0.6 * lean, g - 0.61 * h, 0.12 * h, 0.2 * h), body)
        stride = _STRIDE[pose] * h * math.sin(phase)
        spread = 0.05 * h if pose == STAND else 0.0
        lift = 0.1 * h * max(0.0, math.cos(phase)) if pose == RUN else 0.0
        shapes.append(Shape("capsule", (*hip, x - stride - spread, g - leg_r - lift, leg_r), limbs))
        shapes.append(Shape("capsule", (*hip, x + stride + spread, g - leg_r, leg_r), limbs))
        swing = 0.8 * stride
    back_hand = (shoulder[0] - swing - s * 0.03 * h, shoulder[1] + 0.3 * h)
    shapes.insert(0, Shape("capsule", (*shoulder, *back_hand, arm_r), _shade(body, 0.6)))
    shapes.append(torso)
    hand = _front_hand(arm, pose, shoulder, s, h, swing)
    shapes.append(Shape("capsule", (*shoulder, *hand, arm_r), _shade(body, 0.85)))
    shapes.append(Shape("ellipse", (*head, head_r, head_r), actor.look.skin))
    shapes += _head_cues(actor, f, head, head_r, s)
    return shapes, hand


def _front_hand(
    arm: int, pose: int, shoulder: tuple[float, float], s: int, h: float, swing: float
) -> tuple[float, float]:
    sx, sy = shoulder
    if arm == ARM_CARRY:
        return sx + s * 0.2 * h, sy + 0.2 * h
    if arm == ARM_REACH:
        return sx + s * 0.34 * h, sy + 0.06 * h
    if arm == ARM_WINDUP:
        return sx - s * 0.1 * h, sy - 0.3 * h
    if arm == ARM_TOUCH:
        return (sx + s * 0.3 * h, sy + 0.17 * h) if pose == CROUCH else (sx + s * 0.33 * h, sy + 0.12 * h)
    return sx + swing + s * 0.03 * h, sy + 0.3 * h


def _head_cues(actor: ActorTrack, f: int, head: tuple[float, float], r: float, s: int) -> list[Shape]:
    """Gaze: a white eye with pupil on the facing side. Talking: mouth and speech mark flashing at fps/4."""
    cues: list[Shape] = []
    hx, hy = head
    if actor.gaze[f]:
        ex, ey = hx + s * 0.5 * r, hy - 0.15 * r
        cues += [Shape("ellipse", (ex, ey, 0.45 * r, 0.45 * r), (255, 255, 255))]
        cues += [Shape("ellipse", (ex + s * 0.2 * r, ey, 0.22 * r, 0.22 * r), (0, 0, 0))]
    if actor.talking[f]:
        on = (f // 2) % 2 == 0
        mouth, mx = (255, 245, 80) if on else (60, 0, 0), hx + s * 0.5 * r
        cues.append(Shape("rect", (mx - 0.5 * r, hy + 0.2 * r, mx + 0.5 * r, hy + 0.75 * r), mouth))
        if on:
            mark = (hx + s * 1.4 * r, hy + 0.2 * r, hx + s * 2.1 * r, hy - 0.5 * r, 0.3 * r)
            cues.append(Shape("capsule", mark, (255, 255, 255), in_box=False))
    return cues


def _shade(color: Color, k: float) -> Color:
    return int(color[0] * k), int(color[1] * k), int(color[2] * k)


class _VideoScript:
    """Plans one video: who does what when, where everyone stands, and the per-frame tracks that follow."""

    def __init__(self, config: SynthConfig, split: str, index: int) -> None:
        self.config, self.split, self.index = config, split, index
        # Spawned children depend only on their index, so the fourth (dense detector) leaves the others as they were.
        seeds = np.random.SeedSequence([config.seed, SPLITS.index(split), index]).spawn(4)
        self.rng = np.random.default_rng(seeds[0])
        self.detector_rng = np.random.default_rng(seeds[1])
        self.background_rng = np.random.default_rng(seeds[2])
        self.dense_detector_rng = np.random.default_rng(seeds[3])
        self.video_id = f"synth_{split}_{index:03d}"
        self.num_frames = config.duration_s * config.fps
        self.num_slots = config.duration_s + 1
        # Slot k covers [k - 0.5 s, k + 0.5 s): poses change only at slot boundaries, so a keyframe's pose
        # holds over at least the central second of its window.
        self.slot_of_frame = np.floor(np.arange(self.num_frames) / config.fps + 0.5).astype(np.int64)
        self.num_actors = int(self.rng.integers(config.min_actors, config.max_actors + 1))
        self.events: list[Event] = []
        self.props: list[PropTrack] = []
        self.clutter: list[Clutter] = []

    # -- small helpers
    def frames_of_slots(self, first: int, last: int) -> tuple[int, int]:
        idx = np.flatnonzero((self.slot_of_frame >= first) & (self.slot_of_frame <= last))
        return int(idx[0]), int(idx[-1])

    def episode_start(self, length: int) -> int | None:
        """A random first slot for an episode of ``length`` slots inside [0, duration]."""
        if length > self.num_slots:
            return None
        return int(self.rng.integers(0, self.num_slots - length + 1))

    def keyframe_slot(self, avoid: tuple[int, int] | None = None) -> int | None:
        """A keyframe second whose window [t-1, t+1] does not overlap the slots ``avoid``."""
        options = [t for t in range(1, self.config.duration_s) if avoid is None or t + 1 < avoid[0] or t - 1 > avoid[1]]
        return int(self.rng.choice(options)) if options else None

    # -- the plan
    def build(self) -> Scene:
        cfg = self.config
        self.order = [int(a) for a in self.rng.permutation(self.num_actors)]
        self.forced = _FORCED[self.index % len(_FORCED)]
        self.plan_motion()
        self.plan_pairs()
        self.plan_touches()
        self.plan_throws_and_carries()
        gaze = self.gaze_frames()
        actors = [self.track(a, gaze[a]) for a in range(self.num_actors)]
        self.place_props(actors)
        self.place_clutter(actors)
        background = self.background()
        holding = self.holding(actors)
        annotations = self.annotations(actors, holding)
        dense = self.dense_annotations(actors, holding)
        return Scene(
            video_id=self.video_id,
            split=self.split,
            width=cfg.width,
            height=cfg.height,
            fps=cfg.fps,
            num_frames=self.num_frames,
            background=background,
            actors=actors,
            props=self.props,
            clutter=self.clutter,
            events=sorted(self.events, key=lambda e: (e.start, e.actor)),
            annotations=annotations,
            predicted_boxes=self.detections(annotations),
            dense_annotations=dense,
            dense_predicted_boxes=self.dense_detections(dense),
        )

    def plan_motion(self) -> None:
        """Pose runs, walking directions and depth per actor, plus the empty per-frame plan arrays."""
        n, shape = self.num_actors, (self.num_actors, self.num_frames)
        self.slot_pose = [self.pose_slots() for _ in range(n)]
        self.slot_dir = [self.direction_slots(p) for p in self.slot_pose]
        self.heights, self.grounds = self.depths()
        self.hue0 = float(self.rng.uniform(0, 1))
        self.first_pair_left = bool(self.rng.random() < 0.5)
        self.episode_slots: list[tuple[int, int] | None] = [None] * n
        self.anchors: dict[int, tuple[int, float]] = {}
        self.facing_fix: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
        self.talking, self.listening = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
        self.arm_touch = np.zeros(shape, dtype=bool)
        self.holds: list[tuple[int, int, int]] = []  # actor, first frame, last frame
        self.gives: list[tuple[int, int, int]] = []  # giver, receiver, keyframe second
        self.touches: list[tuple[int, int]] = []  # actor, facing
        self.throws: list[tuple[int, int]] = []  # actor, keyframe second
        self.roles: dict[int, str] = {}

    def plan_pairs(self) -> None:
        """Pair up actors; a pair may talk (alternating turns) or pass an object, standing face to face."""
        rng = self.rng
        for k in range(self.num_actors // 2):
            a, b = self.order[2 * k], self.order[2 * k + 1]
            kind = str(rng.choice(list(_PAIR_KINDS), p=list(_PAIR_KINDS.values())))
            if k == 0 and self.forced in ("give", "talk"):
                kind = self.forced
            if k == 0 and self.forced == "touch" and self.num_actors == 2:
                kind = "none"
            if kind == "talk":
                length = min(int(rng.integers(6, 10)), self.num_slots)
                first = self.episode_start(length)
            elif kind == "give":
                t = self.keyframe_slot()
                length, first = 3, None if t is None else t - 1
            else:
                continue
            if first is None:
                continue
            last = first + length - 1
            self.pin_pair(a, b, first, last, _TALK_GAP if kind == "talk" else _GIVE_GAP, k)
            if kind == "talk":
                self.talk_turns(a, b, first, last)
                self.roles[a] = self.roles[b] = "talk"
            else:
                giver, receiver = (a, b) if rng.random() < 0.5 else (b, a)
                self.gives.append((giver, receiver, first + 1))
                self.roles[giver], self.roles[receiver] = "giver", "receiver"

    def pin_pair(self, a: int, b: int, first: int, last: int, gap_factor: float, k: int) -> None:
        """Both partners stand still over slots [first, last], ``gap`` apart, facing each other.

        Pair ``k`` meets in its own half of the frame (the halves' order is random), so two pairs never merge.
        """
        width = self.config.width
        gap = gap_factor * max(self.heights[a], self.heights[b])
        left_half = self.first_pair_left == (k == 0)
        mid = width * (self.rng.uniform(0.27, 0.42) if left_half else self.rng.uniform(0.58, 0.73))
        left, right = (a, b) if self.rng.random() < 0.5 else (b, a)
        f0, f1 = self.frames_of_slots(first, last)
        for actor, x, face in ((left, mid - gap / 2, 1), (right, mid + gap / 2, -1)):
            self.slot_pose[actor][first : last + 1] = STAND
            self.episode_slots[actor] = (first, last)
            self.anchors[actor] = (f0, x)
            self.facing_fix[actor].append((f0, f1, face))

    def plan_touches(self) -> None:
        """Unpaired actors may stand or crouch still for 3-5 slots with a hand on an object."""
        free = [a for a in self.order if a not in self.roles]
        for i, a in enumerate(free):
            if not (self.rng.random() < _P_TOUCH or (self.forced == "touch" and i == 0)):
                continue
            length = min(int(self.rng.integers(3, 6)), self.num_slots)
            first = self.episode_start(length)
            assert first is not None  # length <= num_slots
            last = first + length - 1
            self.slot_pose[a][first : last + 1] = CROUCH if self.rng.random() < 0.4 else STAND
            face = 1 if self.rng.random() < 0.5 else -1
            lo, hi = self.x_range(self.heights[a])
            f0, f1 = self.frames_of_slots(first, last)
            self.anchors[a] = (
                f0,
                float(self.rng.uniform(lo + 0.3 * self.heights[a], hi - 0.3 * self.heights[a])),
            )
            self.episode_slots[a] = (first, last)
            self.facing_fix[a].append((f0, f1, face))
            self.arm_touch[a, f0 : f1 + 1] = True
            self.touches.append((a, face))
            self.roles[a] = "touch"

    def plan_throws_and_carries(self) -> None:
        """Throwers hold an object from the start and throw it at a keyframe outside their episode."""
        candidates = [a for a in self.order if self.roles.get(a) not in ("giver", "receiver", "touch")]
        for i, a in enumerate(candidates):
            if self.rng.random() < _P_THROW or (self.forced == "throw" and i == 0):
                t = self.keyframe_slot(self.episode_slots[a])
                if t is not None:
                    self.throws.append((a, t))
                    self.roles[a] = "thrower"
                    if self.slot_pose[a][t] == CROUCH:
                        self.slot_pose[a][t] = STAND
        for a in self.order:
            if a not in self.roles and self.rng.random() < _P_CARRY:
                self.holds.append((a, 0, self.num_frames - 1))
                self.roles[a] = "carrier"

    def pose_slots(self) -> np.ndarray:
        poses = np.empty(self.num_slots, dtype=np.int64)
        k = 0
        while k < self.num_slots:
            length = int(self.rng.integers(2, 6))
            poses[k : k + length] = self.rng.choice(list(_POSE_WEIGHTS), p=list(_POSE_WEIGHTS.values()))
            k += length
        return poses

    def direction_slots(self, poses: np.ndarray) -> np.ndarray:
        """A walking direction per slot, redrawn whenever the pose changes."""
        dirs = np.empty(self.num_slots, dtype=np.int64)
        for k in range(self.num_slots):
            dirs[k] = self.rng.choice([-1, 1]) if k == 0 or poses[k] != poses[k - 1] else dirs[k - 1]
        return dirs

    def depths(self) -> tuple[list[float], list[float]]:
        """Ground line per actor (lower = nearer = taller); pair partners share a ground line."""
        cfg = self.config
        lo, hi = 0.62 * cfg.height, 0.95 * cfg.height
        grounds = [float(self.rng.uniform(lo, hi)) for _ in range(self.num_actors)]
        for k in range(self.num_actors // 2):
            grounds[self.order[2 * k + 1]] = grounds[self.order[2 * k]]
        heights = [0.34 * cfg.height * (0.85 + 0.3 * (gy - lo) / (hi - lo)) for gy in grounds]
        return heights, grounds

    def x_range(self, height: float) -> tuple[float, float]:
        return 0.45 * height, self.config.width - 0.45 * height

    def talk_turns(self, a: int, b: int, first: int, last: int) -> None:
        """Alternate speakers in turns of 3-4 slots; the listener gets the label but no cue of its own."""
        speaker, other = (a, b) if self.rng.random() < 0.5 else (b, a)
        k = first
        while k <= last:
            end = min(last, k + int(self.rng.integers(3, 5)) - 1)
            if last - end < 3:
                end = last
            f0, f1 = self.frames_of_slots(k, end)
            self.talking[speaker, f0 : f1 + 1] = True
            self.listening[other, f0 : f1 + 1] = True
            speaker, other = other, speaker
            k = end + 1

    def gaze_frames(self) -> np.ndarray:
        """Runs of 3-6 slots in which an actor shows its eye, never during its own episode."""
        gaze = np.zeros((self.num_actors, self.num_frames), dtype=bool)
        for a in range(self.num_actors):
            if self.rng.random() >= _P_GAZE:
                continue
            length = min(int(self.rng.integers(4, 8)), self.num_slots)
            first = self.episode_start(length)
            assert first is not None  # length <= num_slots
            f0, f1 = self.frames_of_slots(first, first + length - 1)
            gaze[a, f0 : f1 + 1] = True
            episode = self.episode_slots[a]
            if episode is not None:
                e0, e1 = self.frames_of_slots(*episode)
                gaze[a, e0 : e1 + 1] = False
        return gaze

    def track(self, a: int, gaze: np.ndarray) -> ActorTrack:
        """Integrate motion from the pose plan, reflecting at the frame edges, pinned to the anchor if any."""
        fps, height = self.config.fps, self.heights[a]
        pose = self.slot_pose[a][self.slot_of_frame]
        speed = np.array([_SPEED[int(p)] for p in pose]) * height
        velocity = speed * self.slot_dir[a][self.slot_of_frame] / fps
        travelled = np.concatenate([[0.0], np.cumsum(velocity)[:-1]])
        lo, hi = self.x_range(height)
        anchor = self.anchors.get(a) or (0, float(self.rng.uniform(lo, hi)))
        unbounded = anchor[1] + travelled - travelled[anchor[0]]
        x = _reflect(unbounded, lo, hi)
        facing = self.facing(x, self.facing_fix[a])
        cadence = np.array([_CADENCE[int(p)] for p in pose])
        phase = np.cumsum(2 * math.pi * cadence / fps) + self.rng.uniform(0, 2 * math.pi)
        hue = (self.hue0 + a * 0.618) % 1.0
        look = ActorLook(
            body=_hsv(hue, 0.8, 0.9),
            limbs=_hsv(hue + 0.05, 0.7, 0.45),
            skin=[(235, 195, 160), (200, 150, 110), (150, 100, 70), (110, 75, 50)][int(self.rng.integers(4))],
            height=height,
        )
        arm = np.full(self.num_frames, ARM_SWING, dtype=np.int8)
        return ActorTrack(
            a, look, self.grounds[a], x, pose, facing, phase, arm, self.talking[a], self.listening[a], gaze
        )

    def facing(self, x: np.ndarray, facing_fix: list[tuple[int, int, int]]) -> np.ndarray:
        """Face the way you move; standing still keeps the last direction or turns round at random."""
        step = np.diff(x, append=x[-1] if len(x) < 2 else 2 * x[-1] - x[-2])
        facing = pd.Series(np.where(np.abs(step) > 1e-9, np.sign(step), np.nan))
        still_run_starts = np.flatnonzero(np.isnan(facing) & ~np.isnan(facing.shift(1, fill_value=0.0)))
        for f in still_run_starts:
            if f > 0 and self.rng.random() < 0.35:
                facing.iloc[f] = -facing.iloc[f - 1] if not np.isnan(facing.iloc[f - 1]) else 1.0
        initial = 1.0 if self.rng.random() < 0.5 else -1.0
        facing = facing.ffill().bfill().fillna(initial).to_numpy(copy=True)
        for f0, f1, face in facing_fix:
            facing[f0 : f1 + 1] = face
        return facing.astype(np.int8)

    def place_props(self, actors: list[ActorTrack]) -> None:
        """Create held, thrown and passed objects, and set the arm modes that go with them."""
        fps, last = self.config.fps, self.num_frames - 1
        half = fps // 2
        transfer, release = min(round(0.375 * fps), half - 1), max(1, round(fps / 8))
        for a, f0, f1 in self.holds:
            prop = self.new_prop(actors[a].look.height)
            prop.holder[f0 : f1 + 1] = a
            actors[a].arm[f0 : f1 + 1] = ARM_CARRY
        for giver, receiver, t in self.gives:
            c = t * fps
            prop = self.new_prop(actors[giver].look.height)
            prop.holder[: c - transfer] = giver
            prop.holder[c + transfer + 1 :] = receiver
            actors[giver].arm[: c - transfer] = ARM_CARRY
            actors[receiver].arm[c + transfer + 1 :] = ARM_CARRY
            for who in (giver, receiver):
                actors[who].arm[c - half : c + half + 1] = ARM_REACH
            start = np.array(actors[giver].shapes(c - transfer - 1)[1])
            end = np.array(actors[receiver].shapes(c + transfer + 1)[1])
            w = np.linspace(0.0, 1.0, 2 * transfer + 3)[1:-1, None]
            prop.free_xy[c - transfer : c + transfer + 1] = (1 - w) * start + w * end
            self.events += [Event(GIVE, giver, c - half, c + half), Event(TAKE, receiver, c - half, c + half)]
        for a, t in self.throws:
            c = t * fps
            actor = actors[a]
            prop = self.new_prop(actor.look.height)
            let_go = c - release
            prop.holder[:let_go] = a
            actor.arm[:let_go] = ARM_CARRY
            actor.arm[c - half : let_go] = ARM_WINDUP
            self.fly(prop, np.array(actor.shapes(let_go - 1)[1]), int(actor.facing[let_go]), actor, let_go)
            self.events.append(Event(THROW, a, c - half, min(last, c + half)))
        for a in range(len(actors)):
            actors[a].arm[self.arm_touch[a]] = ARM_TOUCH

    def new_prop(self, height: float) -> PropTrack:
        kind = str(self.rng.choice(["ellipse", "diamond", "rect"]))
        prop = PropTrack(
            kind=kind,
            color=_hsv(self.rng.uniform(0, 1), 0.9, 1.0),
            radius=0.1 * height,
            holder=np.full(self.num_frames, -1, dtype=np.int64),
            free_xy=np.full((self.num_frames, 2), np.nan),
        )
        self.props.append(prop)
        return prop

    def fly(self, prop: PropTrack, start: np.ndarray, s: int, actor: ActorTrack, f0: int) -> None:
        """Ballistic flight from the hand until the object leaves the frame or reaches the ground."""
        h, fps = actor.look.height, self.config.fps
        vx, vy = s * self.rng.uniform(3.0, 4.0) * h, -self.rng.uniform(0.6, 1.2) * h
        t = (np.arange(f0, self.num_frames) - f0 + 1) / fps
        xy = np.stack([start[0] + vx * t, start[1] + vy * t + 1.5 * h * t**2], axis=1)
        inside = (xy[:, 0] > -prop.radius) & (xy[:, 0] < self.config.width + prop.radius)
        inside &= xy[:, 1] < actor.ground_y
        visible = np.cumprod(inside).astype(bool)
        prop.free_xy[f0:][visible] = xy[visible]

    def place_clutter(self, actors: list[ActorTrack]) -> None:
        """Touch targets at the toucher's hand, plus distractors: posts, crates and object-like things."""
        cfg, rng = self.config, self.rng
        for a, s in self.touches:
            actor = actors[a]
            f = int(np.flatnonzero(actor.arm == ARM_TOUCH)[0])
            hx, hy = actor.shapes(f)[1]
            r = 0.11 * actor.look.height
            self.clutter.append(self.object_on_stand(hx + s * 0.8 * r, hy, r, actor.ground_y, "target"))
        for _ in range(int(rng.integers(3, 8))):
            kind = str(rng.choice(["post", "crate", "object", "object"]))
            gy = float(rng.uniform(0.5 * cfg.height, 0.97 * cfg.height))
            x = float(rng.uniform(0.05, 0.95) * cfg.width)
            scale = 0.34 * cfg.height
            if kind == "post":
                w, hgt = rng.uniform(0.06, 0.14) * scale, rng.uniform(0.7, 1.3) * scale
                color = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.4), rng.uniform(0.3, 0.6))
                self.clutter.append(Clutter(kind, (Shape("rect", (x - w / 2, gy - hgt, x + w / 2, gy), color),)))
            elif kind == "crate":
                w, hgt = rng.uniform(0.3, 0.6) * scale, rng.uniform(0.25, 0.45) * scale
                color = _hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.5), rng.uniform(0.4, 0.7))
                outer = Shape("rect", (x - w / 2, gy - hgt, x + w / 2, gy), _shade(color, 0.6))
                inner = Shape("rect", (x - w / 2 + 1.5, gy - hgt + 1.5, x + w / 2 - 1.5, gy - 1.5), color)
                self.clutter.append(Clutter(kind, (outer, inner)))
            else:
                r = 0.11 * scale
                y = gy - rng.uniform(0.0, 0.5) * scale
                self.clutter.append(self.object_on_stand(x, y, r, gy, "object"))

    def object_on_stand(self, x: float, y: float, r: float, ground: float, kind: str) -> Clutter:
        """An object-like shape with a thin stand down to the ground (a 'table'), as touch targets have."""
        shapes = []
        if ground - y > r:
            shapes.append(Shape("rect", (x - 0.25 * r, y, x + 0.25 * r, ground), (90, 70, 50)))
        shape_kind = str(self.rng.choice(["ellipse", "diamond", "rect"]))
        color = _hsv(self.rng.uniform(0, 1), 0.85, 0.95)
        params = {"ellipse": (x, y, r, r), "diamond": (x, y, 1.3 * r), "rect": (x - r, y - r, x + r, y + r)}
        shapes.append(Shape(shape_kind, params[shape_kind], color))
        return Clutter(kind, tuple(shapes))

    def background(self) -> np.ndarray:
        """Smooth two-tone noise plus stripes, a different ground tone, then the static clutter."""
        cfg, rng = self.config, self.background_rng
        h, w = cfg.height, cfg.width
        horizon = int(rng.uniform(0.35, 0.55) * h)
        img = np.empty((h, w, 3), dtype=np.float32)
        for y0, y1 in ((0, horizon), (horizon, h)):
            c1 = np.array(_hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.35), rng.uniform(0.35, 0.7)), np.float32)
            c2 = np.array(_hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.35), rng.uniform(0.35, 0.7)), np.float32)
            noise = _smooth_noise(rng, y1 - y0, w, (int(rng.integers(2, 6)), int(rng.integers(3, 8))))
            img[y0:y1] = c1 * (1 - noise[..., None]) + c2 * noise[..., None]
        theta, period = rng.uniform(0, math.pi), rng.uniform(6, 30)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        stripes = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + rng.uniform(0, 6.3))
        img += rng.uniform(6, 20) * stripes[..., None]
        out = np.clip(img, 0, 255).astype(np.uint8)
        for item in self.clutter:
            for shape in item.shapes:
                _paint(out, shape)
        return out

    # -- tables
    def holding(self, actors: list[ActorTrack]) -> np.ndarray:
        """[A, F] bool: actor ``a`` has an object in its hand at frame ``f`` (what carry is decided from)."""
        holding = np.zeros((len(actors), self.num_frames), dtype=bool)
        for prop in self.props:
            for a in range(len(actors)):
                holding[a] |= prop.holder == a
        return holding

    def labels_at(self, actors: list[ActorTrack], holding: np.ndarray, a: int, c: int) -> list[int]:
        """Sorted action ids of actor ``a`` for the +-1 s window centred on frame ``c`` (clipped to the video).

        The labelling rules live here and only here: keyframe and dense labels both come from this function, so a
        keyframe's labels are exactly the dense labels of its frame. Every rule but the pose must hold over the
        whole window; a short event counts where the window contains all of it.
        """
        fps, actor = self.config.fps, actors[a]
        lo, hi = max(0, c - fps), min(self.num_frames - 1, c + fps)
        window = slice(lo, hi + 1)
        labels = [int(actor.pose[c])]
        labels += [CARRY] if holding[a, window].all() else []
        labels += [TOUCH] if (actor.arm[window] == ARM_TOUCH).all() else []
        labels += [e.action_id for e in self.events if e.actor == a and lo <= e.start and e.end <= hi]
        labels += [TALK] if actor.talking[window].all() else []
        labels += [LISTEN] if actor.listening[window].all() else []
        labels += [WATCH] if self.watching(actors, a, window) else []
        return sorted(labels)

    def pixel_box(self, actor: ActorTrack, f: int) -> tuple[float, float, float, float]:
        """The actor's box at frame ``f`` clipped to the frame, in pixels (actors may reach past an edge)."""
        x1, y1, x2, y2 = actor.box(f)
        cfg = self.config
        return max(0.0, x1), max(0.0, y1), min(float(cfg.width), x2), min(float(cfg.height), y2)

    def annotations(self, actors: list[ActorTrack], holding: np.ndarray) -> pd.DataFrame:
        """One row per (keyframe, actor, action), boxes normalised."""
        cfg, rows = self.config, []
        for t in range(1, cfg.duration_s):
            c = t * cfg.fps
            for a, actor in enumerate(actors):
                x1, y1, x2, y2 = self.pixel_box(actor, c)
                box = (x1 / cfg.width, y1 / cfg.height, x2 / cfg.width, y2 / cfg.height)
                rows += [(self.video_id, t, *box, label, a) for label in self.labels_at(actors, holding, a, c)]
        columns = ["video_id", "timestamp", "x1", "y1", "x2", "y2", "action_id", "person_id"]
        return pd.DataFrame(rows, columns=columns).astype(
            {"timestamp": np.int64, "action_id": np.int64, "person_id": np.int64}
        )

    def dense_annotations(self, actors: list[ActorTrack], holding: np.ndarray) -> pd.DataFrame:
        """One row per (labelled frame, actor, action): 0-based ``frame``, ``person_id``, ``action_id``, pixel box."""
        rows = []
        for c in _labelled_frames(self.num_frames, self.config.fps):
            for a, actor in enumerate(actors):
                box = self.pixel_box(actor, c)
                rows += [(c, a, label, *box) for label in self.labels_at(actors, holding, a, c)]
        columns = ["frame", "person_id", "action_id", "x1", "y1", "x2", "y2"]
        return pd.DataFrame(rows, columns=columns).astype(
            {"frame": np.int64, "person_id": np.int64, "action_id": np.int64}
        )

    @staticmethod
    def watching(actors: list[ActorTrack], a: int, window: slice) -> bool:
        """Watch = gaze cue over the window and one other actor on the faced side throughout."""
        me = actors[a]
        if not me.gaze[window].all():
            return False
        margin = _WATCH_MIN_OFFSET * me.look.height
        side = me.facing[window].astype(np.float64)
        return any((side * (other.x[window] - me.x[window]) > margin).all() for other in actors if other.person_id != a)

    def detections(self, annotations: pd.DataFrame) -> pd.DataFrame:
        """The simulated detector on every keyframe (AVA timestamps in seconds)."""
        boxes = annotations.drop_duplicates(["timestamp", "person_id"])
        return self.detector(boxes, self.detector_rng)

    def dense_detections(self, dense: pd.DataFrame) -> pd.DataFrame:
        """The simulated detector on every labelled frame; ``timestamp`` is the 1-based frame number."""
        cfg = self.config
        boxes = dense.drop_duplicates(["frame", "person_id"])
        scale = np.array([cfg.width, cfg.height, cfg.width, cfg.height], dtype=np.float64)
        normalised = pd.DataFrame(boxes[["x1", "y1", "x2", "y2"]].to_numpy() / scale, columns=["x1", "y1", "x2", "y2"])
        normalised.insert(0, "timestamp", boxes["frame"].to_numpy() + 1)
        return self.detector(normalised, self.dense_detector_rng)

    def detector(self, boxes: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        """A simulated person detector: jittered GT boxes (some missed) plus false positives on clutter.

        ``boxes`` holds one normalised actor box per (timestamp, actor), actors in order within a timestamp; the
        draws follow that order, so a given ``rng`` state always gives the same detections.
        """
        cfg = self.config
        rows = []
        order = np.argsort(boxes["timestamp"].to_numpy(), kind="stable")  # pandas groupby per frame is too slow
        stamps, coords = boxes["timestamp"].to_numpy()[order], boxes[["x1", "y1", "x2", "y2"]].to_numpy()[order]
        starts = np.flatnonzero(np.diff(stamps, prepend=stamps[:1] - 1) != 0) if len(stamps) else np.array([], int)
        for t, group in zip(stamps[starts], np.split(coords, starts[1:]), strict=True):
            for box in group:
                if rng.random() < cfg.detector_miss_rate:
                    continue
                rows.append((t, *_jitter(rng, box, cfg.detector_jitter), float(rng.uniform(0.7, 1.0))))
            if not self.clutter:
                continue
            for _ in range(int(rng.poisson(cfg.detector_false_positives_per_frame))):
                item = self.clutter[int(rng.integers(len(self.clutter)))]
                x1, y1, x2, y2 = item.box()
                pad_x, pad_y = 0.15 * (x2 - x1) + 1, 0.15 * (y2 - y1) + 1
                box = np.array(
                    [
                        (x1 - pad_x) / cfg.width,
                        (y1 - pad_y) / cfg.height,
                        (x2 + pad_x) / cfg.width,
                        (y2 + pad_y) / cfg.height,
                    ]
                )
                rows.append((t, *_jitter(rng, np.clip(box, 0, 1), cfg.detector_jitter), float(rng.uniform(0.05, 0.6))))
        df = pd.DataFrame(rows, columns=["timestamp", "x1", "y1", "x2", "y2", "score"])
        df.insert(0, "video_id", self.video_id)
        df.insert(6, "action_id", pd.array([pd.NA] * len(df), dtype="Int64"))
        df = df.astype({"timestamp": np.int64})
        return df.sort_values(["timestamp", "score"], ascending=[True, False], kind="stable").reset_index(drop=True)


def _jitter(rng: np.random.Generator, box: np.ndarray, amount: float) -> tuple[float, ...]:
    """Move each edge by N(0, amount * side length), keep it inside [0, 1] and at least 1% wide."""
    w, h = box[2] - box[0], box[3] - box[1]
    noisy = box + rng.normal(0.0, amount, 4) * np.array([w, h, w, h])
    noisy = np.clip(noisy, 0.0, 1.0)
    noisy[2] = max(noisy[2], min(1.0, noisy[0] + 0.01))
    noisy[0] = min(noisy[0], noisy[2] - 0.01)
    noisy[3] = max(noisy[3], min(1.0, noisy[1] + 0.01))
    noisy[1] = min(noisy[1], noisy[3] - 0.01)
    return tuple(float(v) for v in noisy)


def _reflect(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold an unbounded coordinate into [lo, hi] like a ball bouncing between two walls."""
    span = hi - lo
    r = np.mod(u - lo, 2 * span)
    return lo + np.where(r <= span, r, 2 * span - r)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """Bilinearly upsampled random grid in [0, 1]: cheap smooth texture without per-pixel Python."""
    grid = rng.random((cells[0] + 1, cells[1] + 1))
    ys, xs = np.linspace(0, cells[0], h), np.linspace(0, cells[1], w)
    y0, x0 = np.minimum(ys.astype(int), cells[0] - 1), np.minimum(xs.astype(int), cells[1] - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


# ----------------------------------------------------------------------------------------------- public API


def make_scenes(config: SynthConfig) -> list[Scene]:
    """Script every video of both splits (train first); cheap, no pixels except the backgrounds."""
    counts = {"train": config.num_videos_train, "val": config.num_videos_val}
    return [_VideoScript(config, split, i).build() for split in SPLITS for i in range(counts[split])]


def render_frame(scene: Scene, f: int) -> np.ndarray:
    """Frame ``f`` as HxWx3 uint8 RGB: background, actors far to near, held objects, flying objects."""
    img = scene.background.copy()
    for actor in sorted(scene.actors, key=lambda a: (a.ground_y, a.person_id)):
        shapes, hand = actor.shapes(f)
        for shape in shapes:
            _paint(img, shape)
        for prop in scene.props:
            if prop.holder[f] == actor.person_id:
                s = int(actor.facing[f])
                _paint(img, _prop_shape(prop, hand[0] + s * 0.5 * prop.radius, hand[1]))
    for prop in scene.props:
        if not np.isnan(prop.free_xy[f, 0]):
            _paint(img, _prop_shape(prop, *prop.free_xy[f]))
    return img


def render(scene: Scene) -> np.ndarray:
    """All frames of a scene, [F, H, W, 3] uint8 RGB."""
    return np.stack([render_frame(scene, f) for f in range(scene.num_frames)])


def _prop_shape(prop: PropTrack, x: float, y: float) -> Shape:
    r = prop.radius
    if prop.kind == "ellipse":
        return Shape("ellipse", (x, y, r, r), prop.color)
    if prop.kind == "diamond":
        return Shape("diamond", (x, y, 1.3 * r), prop.color)
    return Shape("rect", (x - r, y - r, x + r, y + r), prop.color)


def _video_codec() -> tuple[str, dict[str, str]]:
    """H.264 at near-lossless quality when the PyAV build has x264, else MPEG-4 part 2 at a high bitrate."""
    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # PyAV raises its own UnknownCodecError subclasses, which vary between versions
        return "mpeg4", {"qscale": "2"}
    return "libx264", {"crf": "16", "preset": "fast"}


def write_video(frames: np.ndarray, path: Path, fps: int) -> None:
    """Encode RGB frames to an mp4 (yuv420p)."""
    codec, options = _video_codec()
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = 4_000_000
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def split_tables(scenes: list[Scene], config: SynthConfig, split: str) -> dict[str, pd.DataFrame]:
    """Annotations (excluded keyframes removed, as in AVA), excluded keyframes and predicted boxes."""
    chosen = [s for s in scenes if s.split == split]
    keyframes = pd.DataFrame(
        [(s.video_id, t) for s in chosen for t in s.keyframes], columns=["video_id", "timestamp"]
    ).astype({"timestamp": np.int64})
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, SPLITS.index(split), 1_000_003]))
    count = round(config.excluded_fraction * len(keyframes))
    picked = np.sort(rng.choice(len(keyframes), size=count, replace=False)) if count else np.array([], int)
    excluded = keyframes.iloc[picked].reset_index(drop=True)
    annotations = pd.concat([s.annotations for s in chosen], ignore_index=True) if chosen else _empty_like_annotations()
    keys = annotations["video_id"] + "@" + annotations["timestamp"].astype(str)
    dropped = set(excluded["video_id"] + "@" + excluded["timestamp"].astype(str))
    annotations = annotations[~keys.isin(dropped)].reset_index(drop=True)
    predicted = pd.concat([s.predicted_boxes for s in chosen], ignore_index=True) if chosen else None
    return {"annotations": annotations, "excluded": excluded, "predicted_boxes": predicted}


class DenseTube(NamedTuple):
    """A dense ground-truth tube: a maximal run of consecutive frames in which one actor carries one label."""

    person_id: int
    action_id: int
    rows: np.ndarray  # [n, 5] float64: 1-based frame, x1, y1, x2, y2 in pixels


# ACT/MOC label index = position in this list (0-based), action ids ascending.
DENSE_LABELS = tuple(SYNTH_CLASSES.names[i] for i in SYNTH_CLASSES.ids)


def dense_tubes(scene: Scene) -> dict[int, list[DenseTube]]:
    """The tubes of one video by ACT label index (ascending), each label's tubes ordered by actor then start."""
    ids = SYNTH_CLASSES.ids
    tubes: dict[int, list[DenseTube]] = {}
    dense = scene.dense_annotations.sort_values(["action_id", "person_id", "frame"], kind="stable")
    for (action, person), group in dense.groupby(["action_id", "person_id"], sort=True):
        frames = group["frame"].to_numpy()
        rows = np.column_stack([frames + 1, group[["x1", "y1", "x2", "y2"]].to_numpy()]).astype(np.float64)
        for run in np.split(rows, np.flatnonzero(np.diff(frames) != 1) + 1):
            tubes.setdefault(ids.index(int(action)), []).append(DenseTube(int(person), int(action), run))
    return tubes


def dense_dataset(scenes: list[Scene]) -> DenseDataset:
    """The ACT/MOC ground truth of ``scenes`` (validated): one split, train videos to train, val videos to test."""
    data = {
        "labels": list(DENSE_LABELS),
        "train_videos": [[s.video_id for s in scenes if s.split == "train"]],
        "test_videos": [[s.video_id for s in scenes if s.split == "val"]],
        "nframes": {s.video_id: s.num_frames for s in scenes},
        "resolution": {s.video_id: (s.height, s.width) for s in scenes},
        "gttubes": {
            s.video_id: {label: [t.rows for t in tubes] for label, tubes in dense_tubes(s).items()} for s in scenes
        },
    }
    return dense_dataset_from_dict(data)


def _write_dense(scenes: list[Scene], out_dir: Path) -> dict[str, int]:
    """``gt.pkl`` and per-split frame-level detector boxes under ``out_dir``; returns the dense counts."""
    ds = dense_dataset(scenes)
    write_dense_dataset(ds, out_dir / "gt.pkl")
    counts: dict[str, int] = {}
    for split in SPLITS:
        chosen = [s for s in scenes if s.split == split]
        path = out_dir / f"predicted_boxes_{split}.csv"
        if chosen:
            predicted = pd.concat([s.dense_predicted_boxes for s in chosen], ignore_index=True)
            write_predicted_boxes(predicted, path)
        else:
            path.write_text("")
        counts[f"dense_{split}_tubes"] = sum(len(t) for s in chosen for t in ds.gttubes[s.video_id].values())
        counts[f"dense_{split}_frames"] = sum(len(s.labelled_frames) for s in chosen)
        counts[f"dense_{split}_predicted_boxes"] = sum(len(s.dense_predicted_boxes) for s in chosen)
    return counts


def _empty_like_annotations() -> pd.DataFrame:
    columns = ["video_id", "timestamp", "x1", "y1", "x2", "y2", "action_id", "person_id"]
    return pd.DataFrame({c: pd.Series([], dtype=str if c == "video_id" else np.float64) for c in columns})


def generate(config: SynthConfig, out_dir: Path) -> dict[str, int]:
    """Write the data set in AVA's layout under ``out_dir``, its dense form under ``dense/``; return counts."""
    out_dir = Path(out_dir)
    scenes = make_scenes(config)
    write_label_map(SYNTH_CLASSES, out_dir / "label_map.pbtxt")
    counts: dict[str, int] = {}
    for split in SPLITS:
        tables = split_tables(scenes, config, split)
        write_annotations(tables["annotations"], out_dir / "annotations" / f"{split}.csv")
        write_excluded_timestamps(tables["excluded"], out_dir / f"excluded_timestamps_{split}.csv")
        predicted = tables["predicted_boxes"]
        if predicted is None:
            (out_dir / f"predicted_boxes_{split}.csv").write_text("")
        else:
            write_predicted_boxes(predicted, out_dir / f"predicted_boxes_{split}.csv")
        ann = tables["annotations"]
        counts[f"{split}_videos"] = sum(s.split == split for s in scenes)
        counts[f"{split}_keyframes"] = int(ann[["video_id", "timestamp"]].drop_duplicates().shape[0])
        counts[f"{split}_boxes"] = int(ann[["video_id", "timestamp", "person_id"]].drop_duplicates().shape[0])
        counts[f"{split}_rows"] = len(ann)
        counts[f"{split}_excluded"] = len(tables["excluded"])
        counts[f"{split}_predicted_boxes"] = 0 if predicted is None else len(predicted)
    counts |= _write_dense(scenes, out_dir / "dense")
    for scene in tqdm(scenes, desc="synth videos", unit="video"):
        write_video(render(scene), out_dir / "videos" / f"{scene.video_id}.mp4", scene.fps)
    logger.info("synthetic set written to %s: %s", out_dir, counts)
    return counts
