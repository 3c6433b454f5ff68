"""The script of one video: who is in it, who pairs up with whom, and who talks, gives, touches, throws or carries.

:func:`draw_script` makes every such choice from the video's script stream and returns them as immutable
records (:class:`Script`); :mod:`stages.data.synth.scenes` turns those into per-frame tracks. The draws happen in
one fixed order (cast, pairs, touches, throws and carries, gaze), which is part of the data set's definition:
changing it changes every video.

Interactions are only decidable from *other* actors or from the direction of change over time, so they are
scripted as episodes in which actors are pinned: partners stand still face to face, touchers stand or crouch at
their target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from stages.data.synth.labels import CROUCH, STAND
from stages.data.synth.motion import draw_direction_slots, draw_pose_slots, x_range
from stages.data.synth.plan import SPLITS, SynthConfig, Timeline

# Scene-script probabilities. The one-keyframe events (throw, give, take) are rare: the long tail.
_PAIR_KINDS = {"talk": 0.3, "give": 0.25, "none": 0.45}
_P_TOUCH = 0.3
_P_THROW = 0.15
_P_CARRY = 0.25
_P_GAZE = 0.6
# One kind of rare episode is forced per video, in turn, so that even a small split has every class.
_FORCED = ("give", "throw", "talk", "touch")
# Distance between pinned partners, in standing heights of the taller one.
_TALK_GAP, _GIVE_GAP = 0.95, 0.78


class Streams(NamedTuple):
    """The independent random streams of one video.

    Spawned children depend only on their index, so the fourth (dense detector) leaves the others as they were.
    """

    script: np.random.Generator
    detector: np.random.Generator
    background: np.random.Generator
    dense_detector: np.random.Generator

    @classmethod
    def of(cls, config: SynthConfig, split: str, index: int) -> Streams:
        """The streams of video ``index`` of ``split``: a function of the seed and the video alone."""
        seeds = np.random.SeedSequence([config.seed, SPLITS.index(split), index]).spawn(4)
        return cls(*(np.random.default_rng(s) for s in seeds))


class Cast(NamedTuple):
    """The actors and their free motion plan, before any episode pins one of them."""

    order: tuple[int, ...]  # random actor order: pairs are (order[0], order[1]), (order[2], order[3]), ...
    forced: str  # the rare episode this video must contain
    poses: tuple[np.ndarray, ...]  # per actor [S] pose per slot
    directions: tuple[np.ndarray, ...]  # per actor [S] walking direction per slot (drawn from the free poses)
    heights: tuple[float, ...]  # standing height in pixels
    grounds: tuple[float, ...]  # ground line y in pixels
    hue0: float  # first actor's hue; the others follow at golden-ratio steps
    first_pair_left: bool  # which half of the frame the first pair meets in

    @property
    def num_actors(self) -> int:
        """Actors in the video (person ids are 0..num_actors-1)."""
        return len(self.order)


class Pin(NamedTuple):
    """An episode: ``actor`` stands still in ``pose`` over slots [first, last] at feet ``x``, facing ``face``."""

    actor: int
    first: int
    last: int
    x: float
    face: int
    pose: int


class TalkTurn(NamedTuple):
    """``speaker`` shows the talking cue over frames [f0, f1]; ``listener`` listens (no cue of its own)."""

    speaker: int
    listener: int
    f0: int
    f1: int


class Give(NamedTuple):
    """``giver`` passes an object to ``receiver`` around keyframe second ``t``."""

    giver: int
    receiver: int
    t: int


class PairEpisode(NamedTuple):
    """Two partners pinned face to face, talking in turns or passing an object."""

    kind: str  # "talk" | "give"
    pins: tuple[Pin, Pin]
    turns: tuple[TalkTurn, ...]
    give: Give | None


class Throw(NamedTuple):
    """``actor`` holds an object from the start and throws it at keyframe second ``t``."""

    actor: int
    t: int


class GazeRun(NamedTuple):
    """``actor`` shows the gaze cue over slots [first, last], except during its own episode."""

    actor: int
    first: int
    last: int


class Script(NamedTuple):
    """Every choice of one video's script; the per-frame tracks follow from it (and from further draws)."""

    cast: Cast
    pairs: tuple[PairEpisode, ...]
    touches: tuple[Pin, ...]
    throws: tuple[Throw, ...]
    carriers: tuple[int, ...]  # hold an object the whole video
    gaze: tuple[GazeRun, ...]

    @property
    def pins(self) -> tuple[Pin, ...]:
        """Every episode: the pair pins, then the touches (the order later pins win in)."""
        return tuple(p for pair in self.pairs for p in pair.pins) + self.touches

    @property
    def turns(self) -> tuple[TalkTurn, ...]:
        """All talk turns of all talking pairs."""
        return tuple(t for pair in self.pairs for t in pair.turns)

    @property
    def gives(self) -> tuple[Give, ...]:
        """All passes, in pair order (the order their objects are drawn in)."""
        return tuple(pair.give for pair in self.pairs if pair.give is not None)


def draw_script(rng: np.random.Generator, config: SynthConfig, timeline: Timeline, index: int) -> Script:
    """Script video ``index``: the draws below, in this order, are the data set's definition."""
    cast = _draw_cast(rng, config, timeline, index)
    pairs = _draw_pairs(rng, config, timeline, cast)
    touches = _draw_touches(rng, config, timeline, cast, _roles(pairs))
    throws = _draw_throws(rng, timeline, cast, pairs, touches)
    carriers = _draw_carriers(rng, cast, _roles(pairs, touches, throws))
    gaze = _draw_gaze(rng, timeline, cast.num_actors)
    return Script(cast, pairs, touches, throws, carriers, gaze)


def slot_poses(script: Script) -> tuple[np.ndarray, ...]:
    """Per actor [S] pose per slot: the free poses, pinned episodes over, throwers standing at their throw."""
    poses = [p.copy() for p in script.cast.poses]
    for pin in script.pins:
        poses[pin.actor][pin.first : pin.last + 1] = pin.pose
    for throw in script.throws:
        if poses[throw.actor][throw.t] == CROUCH:
            poses[throw.actor][throw.t] = STAND
    return tuple(poses)


def episodes(script: Script) -> dict[int, Pin]:
    """The episode (pin) of each pinned actor."""
    return {pin.actor: pin for pin in script.pins}


# ----------------------------------------------------------------------------------------------- draws


def _draw_cast(rng: np.random.Generator, config: SynthConfig, timeline: Timeline, index: int) -> Cast:
    """Actor count and order, free pose runs, walking directions, depth and the colour / pairing coin flips."""
    num_actors = int(rng.integers(config.min_actors, config.max_actors + 1))
    order = tuple(int(a) for a in rng.permutation(num_actors))
    poses = tuple(draw_pose_slots(rng, timeline.num_slots) for _ in range(num_actors))
    directions = tuple(draw_direction_slots(rng, p) for p in poses)
    heights, grounds = _draw_depths(rng, config, order)
    hue0 = float(rng.uniform(0, 1))
    first_pair_left = bool(rng.random() < 0.5)
    forced = _FORCED[index % len(_FORCED)]
    return Cast(order, forced, poses, directions, heights, grounds, hue0, first_pair_left)


def _draw_depths(
    rng: np.random.Generator, config: SynthConfig, order: Sequence[int]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Ground line per actor (lower = nearer = taller); pair partners share a ground line."""
    lo, hi = 0.62 * config.height, 0.95 * config.height
    grounds = [float(rng.uniform(lo, hi)) for _ in order]
    for k in range(len(order) // 2):
        grounds[order[2 * k + 1]] = grounds[order[2 * k]]
    heights = [0.34 * config.height * (0.85 + 0.3 * (gy - lo) / (hi - lo)) for gy in grounds]
    return tuple(heights), tuple(grounds)


def _draw_pairs(
    rng: np.random.Generator, config: SynthConfig, timeline: Timeline, cast: Cast
) -> tuple[PairEpisode, ...]:
    """Pair up actors in order; a pair may talk (alternating turns) or pass an object, standing face to face."""
    pairs = []
    for k in range(cast.num_actors // 2):
        a, b = cast.order[2 * k], cast.order[2 * k + 1]
        kind = str(rng.choice(list(_PAIR_KINDS), p=list(_PAIR_KINDS.values())))
        if k == 0 and cast.forced in ("give", "talk"):
            kind = cast.forced
        if k == 0 and cast.forced == "touch" and cast.num_actors == 2:
            kind = "none"
        if kind == "talk":
            length = min(int(rng.integers(6, 10)), timeline.num_slots)
            first = _episode_start(rng, timeline, length)
        elif kind == "give":
            t = _keyframe_slot(rng, timeline)
            length, first = 3, None if t is None else t - 1
        else:
            continue
        if first is None:
            continue
        last = first + length - 1
        pins = _draw_pair_pins(rng, config, cast, a, b, first, last, k, _TALK_GAP if kind == "talk" else _GIVE_GAP)
        if kind == "talk":
            pairs.append(PairEpisode(kind, pins, _draw_talk_turns(rng, timeline, a, b, first, last), None))
        else:
            giver, receiver = (a, b) if rng.random() < 0.5 else (b, a)
            pairs.append(PairEpisode(kind, pins, (), Give(giver, receiver, first + 1)))
    return tuple(pairs)


def _draw_pair_pins(
    rng: np.random.Generator,
    config: SynthConfig,
    cast: Cast,
    a: int,
    b: int,
    first: int,
    last: int,
    k: int,
    gap_factor: float,
) -> tuple[Pin, Pin]:
    """Both partners stand still over slots [first, last], ``gap`` apart, facing each other.

    Pair ``k`` meets in its own half of the frame (the halves' order is random), so two pairs never merge.
    """
    gap = gap_factor * max(cast.heights[a], cast.heights[b])
    left_half = cast.first_pair_left == (k == 0)
    mid = config.width * (rng.uniform(0.27, 0.42) if left_half else rng.uniform(0.58, 0.73))
    left, right = (a, b) if rng.random() < 0.5 else (b, a)
    return Pin(left, first, last, mid - gap / 2, 1, STAND), Pin(right, first, last, mid + gap / 2, -1, STAND)


def _draw_talk_turns(
    rng: np.random.Generator, timeline: Timeline, a: int, b: int, first: int, last: int
) -> tuple[TalkTurn, ...]:
    """Alternate speakers in turns of 3-4 slots over slots [first, last]; a short last turn is merged."""
    speaker, other = (a, b) if rng.random() < 0.5 else (b, a)
    turns = []
    k = first
    while k <= last:
        end = min(last, k + int(rng.integers(3, 5)) - 1)
        if last - end < 3:
            end = last
        turns.append(TalkTurn(speaker, other, *timeline.frames_of_slots(k, end)))
        speaker, other = other, speaker
        k = end + 1
    return tuple(turns)


def _draw_touches(
    rng: np.random.Generator, config: SynthConfig, timeline: Timeline, cast: Cast, roles: dict[int, str]
) -> tuple[Pin, ...]:
    """Unpaired actors may stand or crouch still for 3-5 slots with a hand on an object."""
    touches = []
    free = [a for a in cast.order if a not in roles]
    for i, a in enumerate(free):
        if not (rng.random() < _P_TOUCH or (cast.forced == "touch" and i == 0)):
            continue
        length = min(int(rng.integers(3, 6)), timeline.num_slots)
        first = _episode_start(rng, timeline, length)
        assert first is not None  # length <= num_slots
        pose = CROUCH if rng.random() < 0.4 else STAND
        face = 1 if rng.random() < 0.5 else -1
        height = cast.heights[a]
        lo, hi = x_range(config.width, height)
        x = float(rng.uniform(lo + 0.3 * height, hi - 0.3 * height))
        touches.append(Pin(a, first, first + length - 1, x, face, pose))
    return tuple(touches)


def _draw_throws(
    rng: np.random.Generator,
    timeline: Timeline,
    cast: Cast,
    pairs: Sequence[PairEpisode],
    touches: Sequence[Pin],
) -> tuple[Throw, ...]:
    """Throwers hold an object from the start and throw it at a keyframe outside their episode."""
    roles = _roles(pairs, touches)
    pinned = {pin.actor: pin for pair in pairs for pin in pair.pins} | {pin.actor: pin for pin in touches}
    throws = []
    candidates = [a for a in cast.order if roles.get(a) not in ("giver", "receiver", "touch")]
    for i, a in enumerate(candidates):
        if rng.random() < _P_THROW or (cast.forced == "throw" and i == 0):
            pin = pinned.get(a)
            t = _keyframe_slot(rng, timeline, None if pin is None else (pin.first, pin.last))
            if t is not None:
                throws.append(Throw(a, t))
    return tuple(throws)


def _draw_carriers(rng: np.random.Generator, cast: Cast, roles: dict[int, str]) -> tuple[int, ...]:
    """Actors without a role may carry an object for the whole video."""
    return tuple(a for a in cast.order if a not in roles and rng.random() < _P_CARRY)


def _draw_gaze(rng: np.random.Generator, timeline: Timeline, num_actors: int) -> tuple[GazeRun, ...]:
    """Runs of 4-7 slots in which an actor shows its eye (cleared during its own episode, see scenes)."""
    runs = []
    for a in range(num_actors):
        if rng.random() >= _P_GAZE:
            continue
        length = min(int(rng.integers(4, 8)), timeline.num_slots)
        first = _episode_start(rng, timeline, length)
        assert first is not None  # length <= num_slots
        runs.append(GazeRun(a, first, first + length - 1))
    return tuple(runs)


def _roles(pairs: Sequence[PairEpisode], touches: Sequence[Pin] = (), throws: Sequence[Throw] = ()) -> dict[int, str]:
    """Each scripted actor's role so far: what later episodes must not overlap."""
    roles: dict[int, str] = {}
    for pair in pairs:
        if pair.give is None:
            roles |= {pin.actor: "talk" for pin in pair.pins}
        else:
            roles |= {pair.give.giver: "giver", pair.give.receiver: "receiver"}
    roles |= {pin.actor: "touch" for pin in touches}
    roles |= {throw.actor: "thrower" for throw in throws}
    return roles


def _episode_start(rng: np.random.Generator, timeline: Timeline, length: int) -> int | None:
    """A random first slot for an episode of ``length`` slots inside [0, duration]."""
    if length > timeline.num_slots:
        return None
    return int(rng.integers(0, timeline.num_slots - length + 1))


def _keyframe_slot(rng: np.random.Generator, timeline: Timeline, avoid: tuple[int, int] | None = None) -> int | None:
    """A keyframe second whose window [t-1, t+1] does not overlap the slots ``avoid``."""
    options = [t for t in range(1, timeline.duration_s) if avoid is None or t + 1 < avoid[0] or t - 1 > avoid[1]]
    return int(rng.choice(options)) if options else None
