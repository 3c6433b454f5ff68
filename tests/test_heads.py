"""Heads: shapes, learning, the property that defines each head, attention weights, padding, ACAR checkpoints."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from cache_spec.views import (
    BOX_ON_MAP,
    CLIP_EXTENT,
    CONTEXT_EXT,
    CONTEXT_MAP,
    FAST_FULL,
    FAST_SPOOL,
    ROI_POOLED,
    ROI_SPATIAL,
    ROI_TEMPORAL,
    SLOW_FULL,
    SLOW_TPOOL,
    VIEWS,
)
from heads import HEADS, Head, build_head, load_acar_checkpoint
from heads._grouping import ClipGroups, masked_softmax

DIMS = {"C": 16, "C_s": 8, "C_f": 8, "H": 5, "W": 6, "T_s": 2, "T_f": 4}
NUM_CLASSES = 4
# Clip 0 has one actor, clip 1 has four: every relation head pads clip 0 with three dummies.
BOX_CLIP = torch.tensor([0, 1, 1, 1, 1])

SMALL: dict[str, dict[str, Any]] = {
    "linear": {},
    "acrn": {"width": 8},
    "acar": {"reduce_width": 8, "width": 8},
    "sto": {"width": 8},
    "pcca": {"width": 16, "num_heads": 2},
    "stca": {"width": 16, "num_heads": 2},
    "s_only": {"width": 16, "num_heads": 2},
    "t_only": {"width": 16, "num_heads": 2},
    "ssfa": {"width": 8},
    "tsfa": {"width": 8},
}
# (registry name, extra options): the defaults plus the ablations each head offers
VARIANTS = [(name, {}) for name in SMALL] + [
    ("acar", {"hr2o": "avg"}),
    ("acar", {"hr2o": "rn"}),
    ("acar", {"order": "actor_first"}),
    ("acar", {"depth": 1}),
    ("acar", {"depth": 3, "downsample": False}),
    ("stca", {"actor": "pooled"}),
    ("stca", {"context": "spatial"}),
    ("ssfa", {"depth": 1, "pool": "max", "layer_norm": False}),
    ("pcca", {"position_embedding": True}),
]
VARIANT_IDS = [name + "".join(f"-{k}={v}" for k, v in options.items()) for name, options in VARIANTS]
RELATION_HEADS = {"acar", "sto", "s_only", "t_only"}
ATTENTION_HEADS = {"acar", "sto", "pcca", "stca", "s_only", "t_only", "ssfa", "tsfa"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: on a shared 2-core machine a second thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_head(name: str, seed: int = 0, dims: dict[str, int] = DIMS, **options: Any) -> Head:
    torch.manual_seed(seed)
    return build_head(name, dims, NUM_CLASSES, **{**SMALL[name], **options}).eval()


def make_views(
    head: Head, box_clip: torch.Tensor, seed: int = 1, dims: dict[str, int] = DIMS
) -> dict[str, torch.Tensor]:
    """Random float16 views shaped like the cache's (ReLU'd, as backbone features are); unpadded maps whole
    (``clip_extent`` = the map size) and boxes inside them (``box_on_map``), as the manifest gives them."""
    gen = torch.Generator().manual_seed(seed)
    n_clips = int(box_clip.max()) + 1
    out = {}
    for view in head.views:
        spec = VIEWS[view]
        rows = n_clips if spec.rows == "clips" else len(box_clip)
        if view == CLIP_EXTENT:
            out[view] = torch.tensor([[dims["H"], dims["W"]]], dtype=torch.float32).repeat(rows, 1)
        elif view == BOX_ON_MAP:
            size = torch.tensor([dims["W"], dims["H"]], dtype=torch.float32)
            corner = torch.rand(rows, 2, generator=gen) * size * 0.5
            extent = (0.2 + 0.3 * torch.rand(rows, 2, generator=gen)) * size
            out[view] = torch.cat([corner, corner + extent], dim=1)
        else:
            out[view] = torch.randn(rows, *spec.shape(dims), generator=gen).relu().half()
    return out


def run(head: Head, views: dict[str, torch.Tensor], box_clip: torch.Tensor = BOX_CLIP) -> torch.Tensor:
    with torch.no_grad():
        return head(views, box_clip)


def perturbed(views: dict[str, torch.Tensor], view: str, row: int) -> dict[str, torch.Tensor]:
    out = dict(views)
    out[view] = views[view].clone()
    out[view][row] = (out[view][row].float() + 3.0 * torch.rand(out[view][row].shape)).half()
    return out


def test_registry_names_and_views() -> None:
    assert set(HEADS) == {"linear", "acrn", "acar", "sto", "pcca", "stca", "s_only", "t_only", "ssfa", "tsfa"}
    for cls in HEADS.values():
        assert cls.views and set(cls.views) <= set(VIEWS)


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_output_shape_one_and_many_actors(name: str, options: dict[str, Any]) -> None:
    head = make_head(name, **options)
    out = run(head, make_views(head, BOX_CLIP))
    assert out.shape == (len(BOX_CLIP), NUM_CLASSES) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_padding_dummies_do_not_change_outputs(name: str, options: dict[str, Any]) -> None:
    """Each clip alone gives the same outputs as in a batch where it is padded (clip 0) or pads others."""
    head = make_head(name, **options)
    views = make_views(head, BOX_CLIP)
    both = run(head, views)
    for clip, rows in ((0, slice(0, 1)), (1, slice(1, 5))):
        alone = {v: (x[clip : clip + 1] if VIEWS[v].rows == "clips" else x[rows]) for v, x in views.items()}
        n = rows.stop - rows.start
        torch.testing.assert_close(run(head, alone, torch.zeros(n, dtype=torch.long)), both[rows])


@pytest.mark.parametrize("name", list(SMALL))
def test_learns_a_fixed_batch(name: str) -> None:
    head = make_head(name).train()
    for module in head.modules():  # dropout would only add noise to a memorisation test
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    box_clip = torch.tensor([0, 1, 1, 1, 2, 2, 2, 2])
    views = make_views(head, box_clip, seed=3)
    targets = (torch.rand(len(box_clip), NUM_CLASSES, generator=torch.Generator().manual_seed(4)) < 0.4).float()
    # ssfa/tsfa pool 49 RoI cells of a LayerNorm'd map of random noise, so their boxes start nearly alike
    optimiser = torch.optim.Adam(head.parameters(), lr=3e-2 if name in ("ssfa", "tsfa") else 1e-2)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(views, box_clip), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses[::10]


ACTOR_VIEW = {
    "linear": ROI_POOLED,
    "acrn": ROI_POOLED,
    "acar": ROI_SPATIAL,
    "sto": ROI_POOLED,
    "pcca": ROI_POOLED,
    "stca": ROI_SPATIAL,
    "s_only": ROI_SPATIAL,
    "t_only": ROI_TEMPORAL,
    "ssfa": BOX_ON_MAP,
    "tsfa": BOX_ON_MAP,
}


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_actor_sees_its_clip_mates_only_in_relation_heads(name: str, options: dict[str, Any]) -> None:
    """Box 1's output moves with box 2 (same clip) only in relation heads, and never with box 0 (other clip)."""
    head = make_head(name, **options)
    views = make_views(head, BOX_CLIP)
    base = run(head, views)[1]
    view = ACTOR_VIEW[name]
    mate = run(head, perturbed(views, view, 2))[1]
    stranger = run(head, perturbed(views, view, 0))[1]
    torch.testing.assert_close(stranger, base)
    if name in RELATION_HEADS:
        assert (mate - base).abs().max() > 1e-4
    else:
        torch.testing.assert_close(mate, base)


@pytest.mark.parametrize(
    ("name", "options", "view", "responds"),
    [
        ("acrn", {}, CONTEXT_MAP, True),
        ("acar", {}, CONTEXT_MAP, True),
        ("pcca", {}, CONTEXT_EXT, True),
        ("stca", {}, SLOW_TPOOL, True),
        ("stca", {}, FAST_SPOOL, True),
        ("stca", {"context": "spatial"}, CONTEXT_MAP, True),
        ("ssfa", {}, SLOW_FULL, True),
        ("tsfa", {}, FAST_FULL, True),
    ],
)
def test_context_reaches_the_actor(name: str, options: dict[str, Any], view: str, responds: bool) -> None:
    head = make_head(name, **options)
    views = make_views(head, BOX_CLIP)
    row = 1  # box 1's clip (clip-row views) or box 1 itself (box-row views)
    changed = (run(head, perturbed(views, view, row))[1] - run(head, views)[1]).abs().max()
    assert (changed > 1e-4) == responds


# Clip-row views laid out on the padded map: cells beyond a clip's extent hold padding
MAP_VIEWS = {v for v, spec in VIEWS.items() if spec.rows == "clips" and spec.dims[-2:] == ("H", "W")}
MAP_HEADS = [v for v in VARIANTS if v[0] in {"acrn", "acar", "stca", "ssfa", "tsfa"}]


def with_extent(views: dict[str, torch.Tensor], extent: list[list[int]]) -> dict[str, torch.Tensor]:
    return {**views, CLIP_EXTENT: torch.tensor(extent, dtype=torch.float32)}


def scramble_padding(views: dict[str, torch.Tensor], extent: list[list[int]]) -> dict[str, torch.Tensor]:
    """The map views with every cell beyond each clip's extent replaced by large noise."""
    gen = torch.Generator().manual_seed(5)
    out = dict(views)
    for view in MAP_VIEWS & set(views):
        x = views[view].clone()
        for clip, (rows, cols) in enumerate(extent):
            for region in ((clip, ..., slice(rows, None), slice(None)), (clip, ..., slice(None), slice(cols, None))):
                x[region] = (5.0 * torch.rand(x[region].shape, generator=gen)).half()
        out[view] = x
    return out


@pytest.mark.parametrize(("name", "options"), MAP_HEADS, ids=[str(v) for v in MAP_HEADS])
def test_padding_beyond_the_extent_reaches_no_box(name: str, options: dict[str, Any]) -> None:
    """Whatever the canvas padding holds changes no output once ``clip_extent`` marks it (and would without)."""
    head = make_head(name, **options)
    views = make_views(head, BOX_CLIP)
    extent = [[4, 5], [3, 4]]
    scrambled = scramble_padding(views, extent)
    base = run(head, with_extent(views, extent))
    torch.testing.assert_close(run(head, with_extent(scrambled, extent)), base)
    if name == "stca":  # the padded slow-map tokens get no attention at all
        weights = head.last_attention["spatial"][1].unflatten(-1, (DIMS["H"], DIMS["W"]))
        assert (weights[..., 3:, :] == 0).all() and (weights[..., :, 4:] == 0).all()
    assert (run(head, scrambled) - run(head, views)).abs().max() > 1e-4  # unmarked, the padding is seen


BIG = {**DIMS, "H": 9, "W": 11}
CROPPABLE = [v for v in VARIANTS if v[0] in {"acrn", "acar", "ssfa", "tsfa"}]  # no per-position parameters


@pytest.mark.parametrize(("name", "options"), CROPPABLE, ids=[str(v) for v in CROPPABLE])
def test_a_padded_clip_gives_what_its_cropped_map_gives(name: str, options: dict[str, Any]) -> None:
    """ACAR-Net's reference crops each clip's map to its extent; the padded clip must give the same outputs."""
    head = make_head(name, dims=BIG, **options)
    box_clip = torch.zeros(3, dtype=torch.long)
    rows, cols = 7, 8
    views = with_extent(make_views(head, box_clip, dims=BIG), [[rows, cols]])
    if BOX_ON_MAP in views:  # inside the extent; the last one reaches its bottom-right border
        views[BOX_ON_MAP] = torch.tensor([[0.5, 0.5, 4.0, 6.0], [2.0, 1.0, 7.5, 6.2], [3.0, 2.0, 8.0, 7.0]])
    cropped = {v: x[..., :rows, :cols] if v in MAP_VIEWS else x for v, x in views.items()}
    torch.testing.assert_close(run(head, views, box_clip), run(head, cropped, box_clip))


@pytest.mark.parametrize("name", ["ssfa", "tsfa"])
def test_ssfa_reads_each_box_from_the_attended_map(name: str) -> None:
    head = make_head(name)
    views = make_views(head, BOX_CLIP)
    base = run(head, views)
    full = head.full_view
    x1, y1, x2, y2 = views[BOX_ON_MAP][1].tolist()
    inside = views[full].clone()
    inside[1, :, :, int(y1) : int(y2) + 1, int(x1) : int(x2) + 1] += 3.0  # clip 1's cells under box 1
    assert (run(head, {**views, full: inside})[1] - base[1]).abs().max() > 1e-4
    moved = views[BOX_ON_MAP].clone()
    moved[1] = torch.tensor([3.0, 2.0, 6.0, 5.0])
    out = run(head, {**views, BOX_ON_MAP: moved})
    assert (out[1] - base[1]).abs().max() > 1e-4
    others = [0, 2, 3, 4]
    torch.testing.assert_close(out[others], base[others])


def test_stca_spatial_context_reads_both_pathways_pooled_over_time() -> None:
    assert HEADS["stca"].views == (ROI_SPATIAL, SLOW_TPOOL, FAST_SPOOL, CLIP_EXTENT)  # what extraction stores
    assert make_head("stca").views == HEADS["stca"].views
    assert make_head("stca", context="spatial").views == (ROI_SPATIAL, CONTEXT_MAP, CLIP_EXTENT)


@pytest.mark.parametrize(("actor", "responds"), [("spatial", True), ("pooled", False)])
def test_stca_sees_where_inside_the_box_a_feature_lies(actor: str, responds: bool) -> None:
    head = make_head("stca", actor=actor)
    views = make_views(head, BOX_CLIP)
    roi = views[ROI_SPATIAL].clone()
    roi[1] = 0.0
    roi[1, 3, 1, 1] = 5.0
    moved = roi.clone()
    moved[1, 3] = 0.0
    moved[1, 3, 5, 4] = 5.0
    a = run(head, {**views, ROI_SPATIAL: roi})[1]
    b = run(head, {**views, ROI_SPATIAL: moved})[1]
    assert ((a - b).abs().max() > 1e-4) == responds


@pytest.mark.parametrize(("name", "options"), [v for v in VARIANTS if v[0] in ATTENTION_HEADS], ids=str)
def test_attention_rows_sum_to_one_and_ignore_padding(name: str, options: dict[str, Any]) -> None:
    head = make_head(name, **options)
    run(head, make_views(head, BOX_CLIP))
    if name == "acar" and options.get("hr2o") == "rn":
        assert head.last_attention == {}  # the relation network has no attention weights
        return
    assert head.last_attention
    for layer, weights in head.last_attention.items():
        assert not weights.requires_grad, layer
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(weights.shape[:-1]), msg=layer)
        if name in RELATION_HEADS:  # keys are actor slots: box 0's clip has one actor, three padded slots
            assert weights.shape[0] == len(BOX_CLIP) and weights.shape[-1] == 4
            assert (weights[0, ..., 1:] == 0).all() and (weights[0, ..., 0] == 1).all()


def test_clip_groups_pad_and_unpad() -> None:
    box_clip = torch.tensor([2, 0, 2, 5, 2])  # unsorted, with clips that have no boxes
    groups = ClipGroups.from_box_clip(box_clip)
    assert groups.clip.tolist() == [0, 2, 5]
    assert groups.valid.tolist() == [[True, False, False], [True, True, True], [True, False, False]]
    x = torch.arange(5.0)[:, None].expand(5, 2)
    padded = groups.pad(x)
    assert padded[1, :, 0].tolist() == [0.0, 2.0, 4.0] and padded[0, 1:].abs().sum() == 0
    torch.testing.assert_close(groups.unpad(padded), x)
    weights = masked_softmax(torch.randn(3, 3, 3), groups.valid[:, None, :])
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 3))
    assert (weights[~groups.valid[:, None, :].expand(3, 3, 3)] == 0).all()


def _reference_acar_state(reduce: int, hidden: int, depth: int, classes: int) -> dict[str, torch.Tensor]:
    """A state dict named as ACAR-Net's training checkpoints name their head (written out, not derived)."""
    gen = torch.Generator().manual_seed(7)
    shapes = {
        "conv_reduce.weight": (reduce, DIMS["C"], 1, 1),
        "conv1.weight": (hidden, 2 * reduce, 1, 1),
        "conv2.weight": (hidden, hidden, 3, 3),
        "fc1.weight": (hidden, reduce),
        "fc2.weight": (classes, 2 * hidden),
    }
    for i in range(depth):
        for conv in ("conv_q", "conv_k", "conv_v", "conv"):
            shapes[f"hr2o.{i}.{conv}.weight"] = (hidden, hidden, 3, 3)
        shapes[f"hr2o.{i}.norm.weight"] = (hidden,)
        shapes[f"hr2o.{i}.norm.bias"] = (hidden,)
    state = {f"module.head.module.{k}": torch.randn(s, generator=gen) for k, s in shapes.items()}
    state["module.backbone.slow.conv1.weight"] = torch.zeros(3)  # other parts of the model are ignored
    return state


def test_load_acar_checkpoint(tmp_path) -> None:
    state = _reference_acar_state(reduce=8, hidden=8, depth=2, classes=NUM_CLASSES)
    path = tmp_path / "ckpt_6.pth.tar"
    torch.save({"epoch": 6, "state_dict": state}, path)
    head = make_head("acar")
    report = load_acar_checkpoint(head, path)
    assert report.missing == [] and report.unexpected == []
    own = head.state_dict()
    for key, value in state.items():
        if key.startswith("module.head.module."):
            torch.testing.assert_close(own[key.removeprefix("module.head.module.")], value)

    partial = {k: v for k, v in state.items() if not k.endswith("fc1.weight")}
    partial["module.head.module.extra.weight"] = torch.zeros(1)
    torch.save(partial, path)  # a bare state dict works too
    report = load_acar_checkpoint(make_head("acar"), path)
    assert report.missing == ["fc1.weight"] and report.unexpected == ["extra.weight"]

    torch.save({"state_dict": state}, path)
    wrong = make_head("acar", seed=1)
    wrong.fc2 = torch.nn.Linear(16, NUM_CLASSES + 1, bias=False)
    before = wrong.conv1.weight.clone()
    with pytest.raises(ValueError, match="fc2.weight"):
        load_acar_checkpoint(wrong, path)
    torch.testing.assert_close(wrong.conv1.weight, before)  # nothing was loaded


def test_acar_needs_a_3x3_map() -> None:
    with pytest.raises(ValueError, match="3x3"):
        build_head("acar", {**DIMS, "H": 2}, NUM_CLASSES)
