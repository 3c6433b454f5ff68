"""The embedded default data set: small synthetic AVA-layout videos, deterministic from a seed.

The point is a data set that exercises the whole pipeline in minutes on a CPU and that has a real answer for
every kind of head: poses are visible in an actor's own crop, object interactions need the object next to it,
and person interactions (give/take, talk/listen, watch) are only decidable from *other* actors or from the
direction of change over time. Labels follow from the scene script by rules that hold over the whole clip
window [t-1 s, t+1 s] around a keyframe, so they are exactly as learnable as the pixels make them.

Scripts (``make_scenes``) are separate from pixels (``render``), so labels and counts can be computed and
tested without encoding any video.

The same videos are also labelled densely (every frame, ACT/MOC ``gt.pkl`` as MultiSports and UCF101-24 ship
it, under ``dense/``): one function (:func:`~stages.data.synth.labels.labels_at`) decides an actor's labels for
the window around any frame, so keyframe and per-frame labels cannot drift apart, and the per-frame detector
draws from its own random stream, so adding the dense files leaves the AVA files byte-identical.

Modules, each importing only those above it:

- ``plan``: ``SynthConfig`` and the immutable plan types (tracks, objects, clutter, events, ``Scene``).
- ``labels``: the label vocabulary (AVA ids, ``SYNTH_CLASSES``) and the labelling rule ``labels_at``.
- ``sprites``: sprite geometry, painting, the background, ``render_frame`` and ``render``.
- ``motion``: pose runs, positions, facing and leg cycle from a pose plan.
- ``detector``: the simulated person detector (misses, false positives on clutter, jitter).
- ``script``: who does what when (pairs, talk turns, gives, touches, throws, carries, gaze) as records.
- ``scenes``: a script turned into a ``Scene`` with its tables; ``make_scenes``.
- ``writers``: videos, the AVA CSVs, the dense ground truth; ``generate``.
"""

from stages.data.synth.labels import (
    CARRY,
    CROUCH,
    DENSE_LABELS,
    GIVE,
    LISTEN,
    POSES,
    RUN,
    STAND,
    SYNTH_CLASSES,
    TAKE,
    TALK,
    THROW,
    TOUCH,
    WALK,
    WATCH,
    labels_at,
)
from stages.data.synth.plan import (
    ARM_CARRY,
    ARM_REACH,
    ARM_SWING,
    ARM_TOUCH,
    ARM_WINDUP,
    SPLITS,
    ActorLook,
    ActorTrack,
    Clutter,
    Color,
    Event,
    PropTrack,
    Scene,
    Shape,
    SynthConfig,
)
from stages.data.synth.scenes import make_scene, make_scenes
from stages.data.synth.sprites import actor_box, actor_shapes, render, render_frame
from stages.data.synth.writers import DenseTube, dense_dataset, dense_tubes, generate, split_tables, write_video

__all__ = [
    "ARM_CARRY",
    "ARM_REACH",
    "ARM_SWING",
    "ARM_TOUCH",
    "ARM_WINDUP",
    "CARRY",
    "CROUCH",
    "DENSE_LABELS",
    "GIVE",
    "LISTEN",
    "POSES",
    "RUN",
    "SPLITS",
    "STAND",
    "SYNTH_CLASSES",
    "TAKE",
    "TALK",
    "THROW",
    "TOUCH",
    "WALK",
    "WATCH",
    "ActorLook",
    "ActorTrack",
    "Clutter",
    "Color",
    "DenseTube",
    "Event",
    "PropTrack",
    "Scene",
    "Shape",
    "SynthConfig",
    "actor_box",
    "actor_shapes",
    "dense_dataset",
    "dense_tubes",
    "generate",
    "labels_at",
    "make_scene",
    "make_scenes",
    "render",
    "render_frame",
    "split_tables",
    "write_video",
]
