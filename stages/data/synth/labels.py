"""The label vocabulary of the synthetic set and the one rule that decides an actor's labels around a frame.

Labels follow from the scene plan by rules that hold over the whole clip window [t-1 s, t+1 s], so they are
exactly as learnable as the pixels make them. :func:`labels_at` is the only place those rules live: keyframe
(AVA) and per-frame (dense) labels both call it, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from stages.data.ava import OBJECT, PERSON, POSE, LabelMap
from stages.data.synth.plan import ARM_TOUCH, ActorTrack, Event, PropTrack

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

# ACT/MOC label index = position in this list (0-based), action ids ascending.
DENSE_LABELS = tuple(SYNTH_CLASSES.names[i] for i in SYNTH_CLASSES.ids)

# Watch needs the watched actor at least this many standing heights away on the faced side.
_WATCH_MIN_OFFSET = 0.3


class Evidence(NamedTuple):
    """What the labelling rules read about one video: the tracks, its short events and who holds an object."""

    actors: Sequence[ActorTrack]
    events: Sequence[Event]
    holding: np.ndarray  # [A, F] bool, see holding()
    fps: int


def holding(actors: Sequence[ActorTrack], props: Sequence[PropTrack], num_frames: int) -> np.ndarray:
    """[A, F] bool: actor ``a`` has an object in its hand at frame ``f`` (what carry is decided from)."""
    held = np.zeros((len(actors), num_frames), dtype=bool)
    for prop in props:
        for a in range(len(actors)):
            held[a] |= prop.holder == a
    return held


def labels_at(evidence: Evidence, a: int, c: int) -> list[int]:
    """Sorted action ids of actor ``a`` for the +-1 s window centred on frame ``c`` (clipped to the video).

    Every rule but the pose must hold over the whole window; a short event counts where the window contains all
    of it.
    """
    actors, fps = evidence.actors, evidence.fps
    actor = actors[a]
    lo, hi = max(0, c - fps), min(evidence.holding.shape[1] - 1, c + fps)
    window = slice(lo, hi + 1)
    labels = [int(actor.pose[c])]
    labels += [CARRY] if evidence.holding[a, window].all() else []
    labels += [TOUCH] if (actor.arm[window] == ARM_TOUCH).all() else []
    labels += [e.action_id for e in evidence.events if e.actor == a and lo <= e.start and e.end <= hi]
    labels += [TALK] if actor.talking[window].all() else []
    labels += [LISTEN] if actor.listening[window].all() else []
    labels += [WATCH] if watching(actors, a, window) else []
    return sorted(labels)


def watching(actors: Sequence[ActorTrack], a: int, window: slice) -> bool:
    """Watch = gaze cue over the window and one other actor on the faced side throughout."""
    me = actors[a]
    if not me.gaze[window].all():
        return False
    margin = _WATCH_MIN_OFFSET * me.look.height
    side = me.facing[window].astype(np.float64)
    return any((side * (other.x[window] - me.x[window]) > margin).all() for other in actors if other.person_id != a)
