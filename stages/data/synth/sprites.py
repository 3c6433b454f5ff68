"""Pixels: the sprite geometry of actors and objects, the background, and frames painted from a scene plan.

Kept apart from the script so labels and counts can be computed and tested without drawing a frame; the only
things the script asks of this module are where an actor's hand is (objects sit there) and its box.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from stages.data.synth.labels import CROUCH, RUN, STAND, WALK
from stages.data.synth.plan import (
    ARM_CARRY,
    ARM_REACH,
    ARM_TOUCH,
    ARM_WINDUP,
    ActorTrack,
    Box,
    Clutter,
    Color,
    PropTrack,
    Scene,
    Shape,
    SynthConfig,
    union_box,
)

# Leg stride amplitude, as a fraction of an actor's standing height.
_STRIDE = {STAND: 0.0, CROUCH: 0.0, WALK: 0.13, RUN: 0.24}

Point = tuple[float, float]


def hsv(h: float, s: float, v: float) -> Color:
    """An RGB colour from HSV (hue wraps), so hues can be spread by adding offsets."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def shade(color: Color, k: float) -> Color:
    """``color`` darkened by factor ``k``."""
    return int(color[0] * k), int(color[1] * k), int(color[2] * k)


def paint(img: np.ndarray, shape: Shape) -> None:
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


# ----------------------------------------------------------------------------------------------- actors


def actor_shapes(actor: ActorTrack, f: int) -> tuple[list[Shape], Point]:
    """The sprite at frame ``f`` (drawing order) and the front-hand point where a held object sits."""
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
    shapes.insert(0, Shape("capsule", (*shoulder, *back_hand, arm_r), shade(body, 0.6)))
    shapes.append(torso)
    hand = _front_hand(arm, pose, shoulder, s, h, swing)
    shapes.append(Shape("capsule", (*shoulder, *hand, arm_r), shade(body, 0.85)))
    shapes.append(Shape("ellipse", (*head, head_r, head_r), actor.look.skin))
    shapes += _head_cues(actor, f, head, head_r, s)
    return shapes, hand


def actor_hand(actor: ActorTrack, f: int) -> Point:
    """The front-hand point at frame ``f``: where held objects sit and where passes and throws start."""
    return actor_shapes(actor, f)[1]


def actor_box(actor: ActorTrack, f: int) -> Box:
    """Tight pixel box of the body at frame ``f`` (speech marks and held objects excluded)."""
    return union_box(actor_shapes(actor, f)[0])


def _front_hand(arm: int, pose: int, shoulder: Point, s: int, h: float, swing: float) -> Point:
    """The front hand by arm mode: the arm is the visible cue of carry, give/take, throw and touch."""
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


def _head_cues(actor: ActorTrack, f: int, head: Point, r: float, s: int) -> list[Shape]:
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


# ----------------------------------------------------------------------------------------------- objects


def object_shape(kind: str, x: float, y: float, r: float, color: Color) -> Shape:
    """An object-like primitive of radius ``r`` centred at (x, y): the same three kinds for props and clutter."""
    if kind == "ellipse":
        return Shape("ellipse", (x, y, r, r), color)
    if kind == "diamond":
        return Shape("diamond", (x, y, 1.3 * r), color)
    return Shape("rect", (x - r, y - r, x + r, y + r), color)


def prop_shape(prop: PropTrack, x: float, y: float) -> Shape:
    """The prop drawn at (x, y)."""
    return object_shape(prop.kind, x, y, prop.radius, prop.color)


# ----------------------------------------------------------------------------------------------- frames


def paint_background(config: SynthConfig, rng: np.random.Generator, clutter: list[Clutter]) -> np.ndarray:
    """Smooth two-tone noise plus stripes, a different ground tone, then the static clutter."""
    h, w = config.height, config.width
    horizon = int(rng.uniform(0.35, 0.55) * h)
    img = np.empty((h, w, 3), dtype=np.float32)
    for y0, y1 in ((0, horizon), (horizon, h)):
        c1 = np.array(hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.35), rng.uniform(0.35, 0.7)), np.float32)
        c2 = np.array(hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.35), rng.uniform(0.35, 0.7)), np.float32)
        noise = _smooth_noise(rng, y1 - y0, w, (int(rng.integers(2, 6)), int(rng.integers(3, 8))))
        img[y0:y1] = c1 * (1 - noise[..., None]) + c2 * noise[..., None]
    theta, period = rng.uniform(0, math.pi), rng.uniform(6, 30)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    stripes = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + rng.uniform(0, 6.3))
    img += rng.uniform(6, 20) * stripes[..., None]
    out = np.clip(img, 0, 255).astype(np.uint8)
    for item in clutter:
        for shape in item.shapes:
            paint(out, shape)
    return out


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """Bilinearly upsampled random grid in [0, 1]: cheap smooth texture without per-pixel Python."""
    grid = rng.random((cells[0] + 1, cells[1] + 1))
    ys, xs = np.linspace(0, cells[0], h), np.linspace(0, cells[1], w)
    y0, x0 = np.minimum(ys.astype(int), cells[0] - 1), np.minimum(xs.astype(int), cells[1] - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def render_frame(scene: Scene, f: int) -> np.ndarray:
    """Frame ``f`` as HxWx3 uint8 RGB: background, actors far to near, held objects, flying objects."""
    img = scene.background.copy()
    for actor in sorted(scene.actors, key=lambda a: (a.ground_y, a.person_id)):
        shapes, hand = actor_shapes(actor, f)
        for shape in shapes:
            paint(img, shape)
        for prop in scene.props:
            if prop.holder[f] == actor.person_id:
                s = int(actor.facing[f])
                paint(img, prop_shape(prop, hand[0] + s * 0.5 * prop.radius, hand[1]))
    for prop in scene.props:
        if not np.isnan(prop.free_xy[f, 0]):
            paint(img, prop_shape(prop, *prop.free_xy[f]))
    return img


def render(scene: Scene) -> np.ndarray:
    """All frames of a scene, [F, H, W, 3] uint8 RGB."""
    return np.stack([render_frame(scene, f) for f in range(scene.num_frames)])
