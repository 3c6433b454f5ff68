"""Motion from a pose plan: pose runs per slot, walking directions, positions, facing and the leg cycle.

Each ``draw_*`` function takes the script's random stream and draws from it in a fixed order; the callers in
:mod:`stages.data.synth.script` and :mod:`stages.data.synth.scenes` call them in the one order that defines the
data set, so the draws are part of the format.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from stages.data.synth.labels import CROUCH, RUN, STAND, WALK

# Stand dominates, which gives the long tail that decoupling / re-balancing heads are meant for.
_POSE_WEIGHTS = {STAND: 0.5, WALK: 0.26, RUN: 0.1, CROUCH: 0.14}
_SPEED = {STAND: 0.0, CROUCH: 0.0, WALK: 0.5, RUN: 1.5}  # standing heights per second
_CADENCE = {STAND: 0.0, CROUCH: 0.0, WALK: 1.3, RUN: 2.4}  # leg cycles per second

FacingFix = tuple[int, int, int]  # first frame, last frame, facing


def draw_pose_slots(rng: np.random.Generator, num_slots: int) -> np.ndarray:
    """Runs of 2-5 slots of one pose each, poses drawn by ``_POSE_WEIGHTS``."""
    poses = np.empty(num_slots, dtype=np.int64)
    k = 0
    while k < num_slots:
        length = int(rng.integers(2, 6))
        poses[k : k + length] = rng.choice(list(_POSE_WEIGHTS), p=list(_POSE_WEIGHTS.values()))
        k += length
    return poses


def draw_direction_slots(rng: np.random.Generator, poses: np.ndarray) -> np.ndarray:
    """A walking direction per slot, redrawn whenever the pose changes."""
    dirs = np.empty(len(poses), dtype=np.int64)
    for k in range(len(poses)):
        dirs[k] = rng.choice([-1, 1]) if k == 0 or poses[k] != poses[k - 1] else dirs[k - 1]
    return dirs


def x_range(width: int, height: float) -> tuple[float, float]:
    """Where an actor of standing ``height`` may put its feet so its body stays (mostly) in the frame."""
    return 0.45 * height, width - 0.45 * height


def positions(
    pose: np.ndarray, direction: np.ndarray, height: float, fps: int, anchor: tuple[int, float], width: int
) -> np.ndarray:
    """[F] feet x: per-frame speed integrated, passing through ``anchor`` (frame, x), reflected at the edges."""
    speed = np.array([_SPEED[int(p)] for p in pose]) * height
    velocity = speed * direction / fps
    travelled = np.concatenate([[0.0], np.cumsum(velocity)[:-1]])
    lo, hi = x_range(width, height)
    unbounded = anchor[1] + travelled - travelled[anchor[0]]
    return _reflect(unbounded, lo, hi)


def draw_facing(rng: np.random.Generator, x: np.ndarray, fixes: Sequence[FacingFix]) -> np.ndarray:
    """Face the way you move; standing still keeps the last direction or turns round at random.

    ``fixes`` override the result over their frames (partners face each other, touchers their target).
    """
    step = np.diff(x, append=x[-1] if len(x) < 2 else 2 * x[-1] - x[-2])
    facing = pd.Series(np.where(np.abs(step) > 1e-9, np.sign(step), np.nan))
    still_run_starts = np.flatnonzero(np.isnan(facing) & ~np.isnan(facing.shift(1, fill_value=0.0)))
    for f in still_run_starts:
        if f > 0 and rng.random() < 0.35:
            facing.iloc[f] = -facing.iloc[f - 1] if not np.isnan(facing.iloc[f - 1]) else 1.0
    initial = 1.0 if rng.random() < 0.5 else -1.0
    filled = facing.ffill().bfill().fillna(initial).to_numpy(copy=True)
    for f0, f1, face in fixes:
        filled[f0 : f1 + 1] = face
    return filled.astype(np.int8)


def draw_phase(rng: np.random.Generator, pose: np.ndarray, fps: int) -> np.ndarray:
    """[F] leg-cycle phase in radians: cadence by pose, integrated from a random start."""
    cadence = np.array([_CADENCE[int(p)] for p in pose])
    return np.cumsum(2 * math.pi * cadence / fps) + rng.uniform(0, 2 * math.pi)


def _reflect(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold an unbounded coordinate into [lo, hi] like a ball bouncing between two walls."""
    span = hi - lo
    r = np.mod(u - lo, 2 * span)
    return lo + np.where(r <= span, r, 2 * span - r)
