"""From a script to a :class:`Scene`: per-frame tracks, objects, clutter, background and the label tables.

:func:`make_scene` is the one place that fixes the order of everything drawn for a video: the script, then each
actor's track, the objects, the clutter (all from the script stream), the background (its own stream) and the
detections (one stream for keyframes, one for dense frames). No step changes what an earlier one returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from stages.data.synth.detector import dense_detections, keyframe_detections
from stages.data.synth.labels import GIVE, TAKE, THROW, Evidence, holding, labels_at
from stages.data.synth.motion import draw_facing, draw_phase, positions, x_range
from stages.data.synth.plan import (
    ARM_CARRY,
    ARM_REACH,
    ARM_SWING,
    ARM_TOUCH,
    ARM_WINDUP,
    SPLITS,
    ActorLook,
    ActorTrack,
    Box,
    Clutter,
    Color,
    Event,
    PropTrack,
    Scene,
    Shape,
    SynthConfig,
    Timeline,
    labelled_frames,
)
from stages.data.synth.script import Give, Script, Streams, draw_script, episodes, slot_poses
from stages.data.synth.sprites import actor_box, actor_hand, hsv, object_shape, paint_background, shade

_SKINS = [(235, 195, 160), (200, 150, 110), (150, 100, 70), (110, 75, 50)]
_OBJECT_KINDS = ["ellipse", "diamond", "rect"]


def make_scenes(config: SynthConfig) -> list[Scene]:
    """Script every video of both splits (train first); cheap, no pixels except the backgrounds."""
    counts = {"train": config.num_videos_train, "val": config.num_videos_val}
    return [make_scene(config, split, i) for split in SPLITS for i in range(counts[split])]


def make_scene(config: SynthConfig, split: str, index: int) -> Scene:
    """Video ``index`` of ``split``: who does what when, where everyone is, and the tables that follow."""
    streams = Streams.of(config, split, index)
    timeline = Timeline.of(config)
    video_id = f"synth_{split}_{index:03d}"
    script = draw_script(streams.script, config, timeline, index)
    actors = _draw_tracks(streams.script, config, timeline, script)
    props = _draw_props(streams.script, config, timeline, script, actors)
    clutter = _draw_clutter(streams.script, config, script, actors)
    events = _events(timeline, script)
    evidence = Evidence(actors, events, holding(actors, props, timeline.num_frames), config.fps)
    annotations = keyframe_annotations(config, video_id, evidence)
    dense = dense_annotations(config, evidence)
    return Scene(
        video_id=video_id,
        split=split,
        width=config.width,
        height=config.height,
        fps=config.fps,
        num_frames=timeline.num_frames,
        background=paint_background(config, streams.background, clutter),
        actors=actors,
        props=props,
        clutter=clutter,
        events=events,
        annotations=annotations,
        predicted_boxes=keyframe_detections(config, video_id, clutter, annotations, streams.detector),
        dense_annotations=dense,
        dense_predicted_boxes=dense_detections(config, video_id, clutter, dense, streams.dense_detector),
    )


# ----------------------------------------------------------------------------------------------- tracks


class _Frames(NamedTuple):
    """The [A, F] per-frame arrays the script fixes without further draws."""

    pose: np.ndarray  # int64 action id
    direction: np.ndarray  # int64 walking direction
    arm: np.ndarray  # int8 ARM_*
    talking: np.ndarray  # bool
    listening: np.ndarray  # bool
    gaze: np.ndarray  # bool


class _Handover(NamedTuple):
    """Frame offsets around a give / throw keyframe c: events span [c - half, c + half]."""

    half: int
    transfer: int  # a passed object flies over [c - transfer, c + transfer]
    release: int  # a thrown object leaves the hand at c - release

    @classmethod
    def of(cls, fps: int) -> _Handover:
        """The offsets at ``fps``; arms, objects and events must all use the same ones."""
        half = fps // 2
        return cls(half, min(round(0.375 * fps), half - 1), max(1, round(fps / 8)))


def _draw_tracks(rng: np.random.Generator, config: SynthConfig, timeline: Timeline, script: Script) -> list[ActorTrack]:
    """Every actor's track, in actor order (each draws its start, facing turns, leg phase and skin)."""
    frames = _script_frames(timeline, script)
    return [_draw_track(rng, config, timeline, script, frames, a) for a in range(script.cast.num_actors)]


def _draw_track(
    rng: np.random.Generator, config: SynthConfig, timeline: Timeline, script: Script, frames: _Frames, a: int
) -> ActorTrack:
    """Integrate motion from the pose plan, reflecting at the frame edges, pinned to the episode if any."""
    cast = script.cast
    height = cast.heights[a]
    mine = [pin for pin in script.pins if pin.actor == a]  # at most one: episodes never overlap
    fixes = [(*timeline.frames_of_slots(pin.first, pin.last), pin.face) for pin in mine]
    if mine:
        anchor = (fixes[-1][0], mine[-1].x)
    else:
        lo, hi = x_range(config.width, height)
        anchor = (0, float(rng.uniform(lo, hi)))
    x = positions(frames.pose[a], frames.direction[a], height, config.fps, anchor, config.width)
    facing = draw_facing(rng, x, fixes)
    phase = draw_phase(rng, frames.pose[a], config.fps)
    hue = (cast.hue0 + a * 0.618) % 1.0
    look = ActorLook(
        body=hsv(hue, 0.8, 0.9),
        limbs=hsv(hue + 0.05, 0.7, 0.45),
        skin=_SKINS[int(rng.integers(4))],
        height=height,
    )
    return ActorTrack(
        person_id=a,
        look=look,
        ground_y=cast.grounds[a],
        x=x,
        pose=frames.pose[a],
        facing=facing,
        phase=phase,
        arm=frames.arm[a],
        talking=frames.talking[a],
        listening=frames.listening[a],
        gaze=frames.gaze[a],
    )


def _script_frames(timeline: Timeline, script: Script) -> _Frames:
    """Poses and directions per frame, arm modes, and the talk and gaze cues."""
    shape = (script.cast.num_actors, timeline.num_frames)  # SynthConfig ensures at least one actor
    pose = np.stack([p[timeline.slot_of_frame] for p in slot_poses(script)])
    direction = np.stack([d[timeline.slot_of_frame] for d in script.cast.directions])
    talking, listening = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    for turn in script.turns:
        talking[turn.speaker, turn.f0 : turn.f1 + 1] = True
        listening[turn.listener, turn.f0 : turn.f1 + 1] = True
    gaze = np.zeros(shape, dtype=bool)
    pinned = episodes(script)
    for run in script.gaze:
        f0, f1 = timeline.frames_of_slots(run.first, run.last)
        gaze[run.actor, f0 : f1 + 1] = True
        if run.actor in pinned:  # never during the actor's own episode
            e0, e1 = timeline.frames_of_slots(pinned[run.actor].first, pinned[run.actor].last)
            gaze[run.actor, e0 : e1 + 1] = False
    return _Frames(pose, direction, _arm_modes(timeline, script), talking, listening, gaze)


def _arm_modes(timeline: Timeline, script: Script) -> np.ndarray:
    """[A, F] front-arm mode: carrying what is held, reaching to pass, winding up to throw, touching."""
    fps, h = timeline.fps, _Handover.of(timeline.fps)
    arm = np.full((script.cast.num_actors, timeline.num_frames), ARM_SWING, dtype=np.int8)
    for a in script.carriers:
        arm[a, :] = ARM_CARRY
    for give in script.gives:
        c = give.t * fps
        arm[give.giver, : c - h.transfer] = ARM_CARRY
        arm[give.receiver, c + h.transfer + 1 :] = ARM_CARRY
        for who in (give.giver, give.receiver):
            arm[who, c - h.half : c + h.half + 1] = ARM_REACH
    for throw in script.throws:
        c = throw.t * fps
        let_go = c - h.release
        arm[throw.actor, :let_go] = ARM_CARRY
        arm[throw.actor, c - h.half : let_go] = ARM_WINDUP
    for pin in script.touches:
        f0, f1 = timeline.frames_of_slots(pin.first, pin.last)
        arm[pin.actor, f0 : f1 + 1] = ARM_TOUCH
    return arm


def _events(timeline: Timeline, script: Script) -> list[Event]:
    """The short events (give, take, throw) by start frame, then actor."""
    fps, last = timeline.fps, timeline.num_frames - 1
    half = _Handover.of(fps).half
    events = []
    for give in script.gives:
        c = give.t * fps
        events += [Event(GIVE, give.giver, c - half, c + half), Event(TAKE, give.receiver, c - half, c + half)]
    for throw in script.throws:
        c = throw.t * fps
        events.append(Event(THROW, throw.actor, c - half, min(last, c + half)))
    return sorted(events, key=lambda e: (e.start, e.actor))


# ----------------------------------------------------------------------------------------------- objects


def _draw_props(
    rng: np.random.Generator, config: SynthConfig, timeline: Timeline, script: Script, actors: Sequence[ActorTrack]
) -> list[PropTrack]:
    """Held, passed and thrown objects, in that order (each draws its look, a throw also its flight)."""
    props = [_carried_prop(rng, timeline, actors[a]) for a in script.carriers]
    props += [_passed_prop(rng, timeline, actors, give) for give in script.gives]
    props += [_thrown_prop(rng, config, timeline, actors[throw.actor], throw.t) for throw in script.throws]
    return props


class _PropLook(NamedTuple):
    """How an object looks; drawn before where it goes, so every object draws the same two numbers first."""

    kind: str
    color: Color
    radius: float

    @classmethod
    def draw(cls, rng: np.random.Generator, height: float) -> _PropLook:
        """An object sized for an actor of standing ``height``."""
        return cls(str(rng.choice(_OBJECT_KINDS)), hsv(rng.uniform(0, 1), 0.9, 1.0), 0.1 * height)

    def track(self, holder: np.ndarray, free_xy: np.ndarray) -> PropTrack:
        """The object with this look at the given places."""
        return PropTrack(kind=self.kind, color=self.color, radius=self.radius, holder=holder, free_xy=free_xy)


def _nobody(timeline: Timeline) -> tuple[np.ndarray, np.ndarray]:
    """Fresh ``holder`` and ``free_xy`` arrays of an object that is nowhere."""
    return np.full(timeline.num_frames, -1, dtype=np.int64), np.full((timeline.num_frames, 2), np.nan)


def _carried_prop(rng: np.random.Generator, timeline: Timeline, actor: ActorTrack) -> PropTrack:
    """An object ``actor`` holds for the whole video."""
    look = _PropLook.draw(rng, actor.look.height)
    holder, free_xy = _nobody(timeline)
    holder[:] = actor.person_id
    return look.track(holder, free_xy)


def _passed_prop(rng: np.random.Generator, timeline: Timeline, actors: Sequence[ActorTrack], give: Give) -> PropTrack:
    """An object the giver holds, that moves from hand to hand around the keyframe and the receiver keeps."""
    giver, receiver = actors[give.giver], actors[give.receiver]
    c, transfer = give.t * timeline.fps, _Handover.of(timeline.fps).transfer
    look = _PropLook.draw(rng, giver.look.height)
    holder, free_xy = _nobody(timeline)
    holder[: c - transfer] = give.giver
    holder[c + transfer + 1 :] = give.receiver
    start = np.array(actor_hand(giver, c - transfer - 1))
    end = np.array(actor_hand(receiver, c + transfer + 1))
    w = np.linspace(0.0, 1.0, 2 * transfer + 3)[1:-1, None]
    free_xy[c - transfer : c + transfer + 1] = (1 - w) * start + w * end
    return look.track(holder, free_xy)


def _thrown_prop(
    rng: np.random.Generator, config: SynthConfig, timeline: Timeline, actor: ActorTrack, t: int
) -> PropTrack:
    """An object held until it leaves the hand just before keyframe ``t``, then in ballistic flight.

    It flies until it leaves the frame or reaches the thrower's ground line.
    """
    fps, h = timeline.fps, actor.look.height
    let_go = t * fps - _Handover.of(fps).release
    look = _PropLook.draw(rng, h)
    holder, free_xy = _nobody(timeline)
    holder[:let_go] = actor.person_id
    start, s = np.array(actor_hand(actor, let_go - 1)), int(actor.facing[let_go])
    vx, vy = s * rng.uniform(3.0, 4.0) * h, -rng.uniform(0.6, 1.2) * h
    time = (np.arange(let_go, timeline.num_frames) - let_go + 1) / fps
    xy = np.stack([start[0] + vx * time, start[1] + vy * time + 1.5 * h * time**2], axis=1)
    inside = (xy[:, 0] > -look.radius) & (xy[:, 0] < config.width + look.radius)
    inside &= xy[:, 1] < actor.ground_y
    visible = np.cumprod(inside).astype(bool)
    free_xy[let_go:][visible] = xy[visible]
    return look.track(holder, free_xy)


def _draw_clutter(
    rng: np.random.Generator, config: SynthConfig, script: Script, actors: Sequence[ActorTrack]
) -> list[Clutter]:
    """Touch targets at the toucher's hand, plus 3-7 distractors: posts, crates and object-like things."""
    clutter = []
    for pin in script.touches:
        actor = actors[pin.actor]
        f = int(np.flatnonzero(actor.arm == ARM_TOUCH)[0])
        hx, hy = actor_hand(actor, f)
        r = 0.11 * actor.look.height
        clutter.append(_object_on_stand(rng, hx + pin.face * 0.8 * r, hy, r, actor.ground_y, "target"))
    for _ in range(int(rng.integers(3, 8))):
        clutter.append(_draw_distractor(rng, config))
    return clutter


def _draw_distractor(rng: np.random.Generator, config: SynthConfig) -> Clutter:
    """A post, a crate or (twice as likely) an object on a stand, somewhere on the ground."""
    kind = str(rng.choice(["post", "crate", "object", "object"]))
    gy = float(rng.uniform(0.5 * config.height, 0.97 * config.height))
    x = float(rng.uniform(0.05, 0.95) * config.width)
    scale = 0.34 * config.height
    if kind == "post":
        w, hgt = rng.uniform(0.06, 0.14) * scale, rng.uniform(0.7, 1.3) * scale
        color = hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.4), rng.uniform(0.3, 0.6))
        return Clutter(kind, (Shape("rect", (x - w / 2, gy - hgt, x + w / 2, gy), color),))
    if kind == "crate":
        w, hgt = rng.uniform(0.3, 0.6) * scale, rng.uniform(0.25, 0.45) * scale
        color = hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.5), rng.uniform(0.4, 0.7))
        outer = Shape("rect", (x - w / 2, gy - hgt, x + w / 2, gy), shade(color, 0.6))
        inner = Shape("rect", (x - w / 2 + 1.5, gy - hgt + 1.5, x + w / 2 - 1.5, gy - 1.5), color)
        return Clutter(kind, (outer, inner))
    r = 0.11 * scale
    y = gy - rng.uniform(0.0, 0.5) * scale
    return _object_on_stand(rng, x, y, r, gy, "object")


def _object_on_stand(rng: np.random.Generator, x: float, y: float, r: float, ground: float, kind: str) -> Clutter:
    """An object-like shape with a thin stand down to the ground (a 'table'), as touch targets have."""
    shapes = []
    if ground - y > r:
        shapes.append(Shape("rect", (x - 0.25 * r, y, x + 0.25 * r, ground), (90, 70, 50)))
    shape_kind = str(rng.choice(_OBJECT_KINDS))
    color = hsv(rng.uniform(0, 1), 0.85, 0.95)
    shapes.append(object_shape(shape_kind, x, y, r, color))
    return Clutter(kind, tuple(shapes))


# ----------------------------------------------------------------------------------------------- tables


def keyframe_annotations(config: SynthConfig, video_id: str, evidence: Evidence) -> pd.DataFrame:
    """The AVA rows: one per (keyframe, actor, action), boxes normalised."""
    rows = []
    for t in range(1, config.duration_s):
        c = t * config.fps
        for a, actor in enumerate(evidence.actors):
            x1, y1, x2, y2 = _pixel_box(config, actor, c)
            box = (x1 / config.width, y1 / config.height, x2 / config.width, y2 / config.height)
            rows += [(video_id, t, *box, label, a) for label in labels_at(evidence, a, c)]
    columns = ["video_id", "timestamp", "x1", "y1", "x2", "y2", "action_id", "person_id"]
    return pd.DataFrame(rows, columns=columns).astype(
        {"timestamp": np.int64, "action_id": np.int64, "person_id": np.int64}
    )


def dense_annotations(config: SynthConfig, evidence: Evidence) -> pd.DataFrame:
    """One row per (labelled frame, actor, action): 0-based ``frame``, ``person_id``, ``action_id``, pixel box."""
    rows = []
    for c in labelled_frames(evidence.holding.shape[1], config.fps):
        for a, actor in enumerate(evidence.actors):
            box = _pixel_box(config, actor, c)
            rows += [(c, a, label, *box) for label in labels_at(evidence, a, c)]
    columns = ["frame", "person_id", "action_id", "x1", "y1", "x2", "y2"]
    return pd.DataFrame(rows, columns=columns).astype({"frame": np.int64, "person_id": np.int64, "action_id": np.int64})


def _pixel_box(config: SynthConfig, actor: ActorTrack, f: int) -> Box:
    """The actor's box at frame ``f`` clipped to the frame, in pixels (actors may reach past an edge)."""
    x1, y1, x2, y2 = actor_box(actor, f)
    return max(0.0, x1), max(0.0, y1), min(float(config.width), x2), min(float(config.height), y2)
