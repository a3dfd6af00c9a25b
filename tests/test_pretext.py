"""Pretext transforms: vectorised == per-sample reference, exact inverses, label decoding, registry."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gssl.pretext import (
    TASKS,
    PretextTask,
    build_pretext,
    quadrant_transform,
    register_task,
    rotation_transform,
    square_transform,
)

PERMS = list(itertools.permutations((0, 1, 2)))
SETTINGS = settings(max_examples=40, deadline=None)


def reference_quadrant(x, q, k, f, c, flip_axis="H"):
    """Straightforward per-sample version in the style of the authors' loop (slices + torch ops)."""
    out = x.clone()
    H, W = x.shape[2:]
    h, w = H // 2, W // 2
    for b in range(x.shape[0]):
        r0, c0 = (int(q[b]) // 2) * h, (int(q[b]) % 2) * w
        patch = out[b, :, r0 : r0 + h, c0 : c0 + w]
        if f is not None and f[b]:
            patch = torch.flip(patch, [1 if flip_axis == "H" else 2])
        if k is not None:
            patch = torch.rot90(patch, int(k[b]), [1, 2])
        if c is not None:
            patch = patch[list(PERMS[int(c[b])])]
        out[b, :, r0 : r0 + h, c0 : c0 + w] = patch
    return out


def invert_quadrant(y, q, k, f, c, flip_axis="H"):
    """Undo perm, then rotation, then flip, per sample."""
    out = y.clone()
    H, W = y.shape[2:]
    h, w = H // 2, W // 2
    for b in range(y.shape[0]):
        r0, c0 = (int(q[b]) // 2) * h, (int(q[b]) % 2) * w
        patch = out[b, :, r0 : r0 + h, c0 : c0 + w]
        if c is not None:
            inverse = [PERMS[int(c[b])].index(i) for i in range(3)]
            patch = patch[inverse]
        if k is not None:
            patch = torch.rot90(patch, -int(k[b]), [1, 2])
        if f is not None and f[b]:
            patch = torch.flip(patch, [1 if flip_axis == "H" else 2])
        out[b, :, r0 : r0 + h, c0 : c0 + w] = patch
    return out


def draw(seed, B, n):
    return torch.randint(n, (B,), generator=torch.Generator().manual_seed(seed))


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    B=st.integers(1, 6),
    half=st.sampled_from([1, 2, 3, 8, 16]),
    ops=st.sampled_from(["rfc", "r", "f", "c", "rf", "fc", "rc", ""]),
    flip_axis=st.sampled_from(["H", "W"]),
)
def test_quadrant_matches_per_sample_and_inverts(seed, B, half, ops, flip_axis):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, 2 * half, 2 * half, generator=g)
    q = draw(seed + 1, B, 4)
    k = draw(seed + 2, B, 4) if "r" in ops else None
    f = draw(seed + 3, B, 2) if "f" in ops else None
    c = draw(seed + 4, B, 6) if "c" in ops else None
    y = quadrant_transform(x, q, k, f, c, flip_axis=flip_axis)
    assert torch.equal(y, reference_quadrant(x, q, k, f, c, flip_axis))
    assert torch.equal(invert_quadrant(y, q, k, f, c, flip_axis), x)
    # Outside the chosen quadrant nothing moves.
    inside = torch.zeros(B, 2 * half, 2 * half, dtype=torch.bool)
    for b in range(B):
        r0, c0 = (int(q[b]) // 2) * half, (int(q[b]) % 2) * half
        inside[b, r0 : r0 + half, c0 : c0 + half] = True
    assert torch.equal(y.masked_fill(inside[:, None], 0), x.masked_fill(inside[:, None], 0))


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    B=st.integers(1, 8),
    size=st.sampled_from([4, 8, 32]),
    flip_axis=st.sampled_from(["H", "W"]),
)
def test_sampler_labels_decode_and_invert(seed, B, size, flip_axis):
    x = torch.randn(B, 3, size, size, generator=torch.Generator().manual_seed(seed))
    pretext = build_pretext(["lorot", "flip", "channel"], flip_axis=flip_axis)
    y, labels = pretext(x, torch.Generator().manual_seed(seed))
    assert set(labels) == {"lorot", "flip", "channel"}
    assert all(v.dtype == torch.long and v.shape == (B,) for v in labels.values())
    q, k = labels["lorot"] // 4, labels["lorot"] % 4
    f, c = labels["flip"], labels["channel"]
    assert int(labels["lorot"].max()) < 16 and int(f.max()) < 2 and int(c.max()) < 6
    # Labels decode back to the parameters that made the image: inverting them restores it exactly.
    assert torch.equal(invert_quadrant(y, q, k, f, c, flip_axis), x)
    assert torch.equal(y, reference_quadrant(x, q, k, f, c, flip_axis))


def test_rotation_only_is_reference_lorot_e():
    """LoRot-E alone, as in the LoRot/G-SSL loop: rot90 of input[i][:, w1:w2, h1:h2] on dims [1, 2]."""
    x = torch.randn(32, 3, 32, 32)
    pretext = build_pretext(["lorot"])
    params = pretext.sample(x, torch.Generator().manual_seed(0))
    assert set(params) == {"quadrant", "rotation"}  # no flip / perm drawn: untouched
    y, labels = pretext.apply(x, params)
    ref = x.clone()
    r = 16
    for i in range(32):
        idx, rot = int(params["quadrant"][i]), int(params["rotation"][i])
        w1, h1 = (0, 0) if idx == 0 else (0, r) if idx == 1 else (r, 0) if idx == 2 else (r, r)
        ref[i][:, w1 : w1 + r, h1 : h1 + r] = torch.rot90(ref[i][:, w1 : w1 + r, h1 : h1 + r], rot, [1, 2])
    assert torch.equal(y, ref)
    assert torch.equal(labels["lorot"], params["quadrant"] * 4 + params["rotation"])


def test_flip_only_and_channel_only_leave_other_ops_out():
    x = torch.randn(16, 3, 8, 8)
    for task, op in (("flip", "f"), ("channel", "c")):
        pretext = build_pretext([task])
        params = pretext.sample(x, torch.Generator().manual_seed(1))
        y, _ = pretext.apply(x, params)
        f = params.get("flip") if op == "f" else None
        c = params.get("perm") if op == "c" else None
        assert torch.equal(y, reference_quadrant(x, params["quadrant"], None, f, c))


@pytest.mark.parametrize("flip_axis, mirror_axis", [("H", "W"), ("W", "H")])
def test_a_flip_composed_with_a_rotation_is_the_other_flip_rotated_by_two_more(flip_axis, mirror_axis):
    """Why the gated triple's flip head cannot read its label off the patch (docs/results.md section 5):
    flipping a quadrant and rotating it by k gives exactly the image that rotating the quadrant's mirror
    image (the flip along the other axis) by k + 2 gives. A mirrored patch is as natural as the patch, so
    the flip bit, and with it rotation k against k + 2, shows only in how the patch meets its surroundings."""
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    quadrant, rotation = torch.arange(8) % 4, torch.arange(8) // 2
    ones, zeros = torch.ones(8, dtype=torch.long), torch.zeros(8, dtype=torch.long)
    flipped = quadrant_transform(x, quadrant, rotation, ones, flip_axis=flip_axis)
    mirrored = quadrant_transform(x, quadrant, None, ones, flip_axis=mirror_axis)
    assert torch.equal(flipped, quadrant_transform(mirrored, quadrant, (rotation + 2) % 4, zeros))
    assert not torch.equal(flipped, quadrant_transform(x, quadrant, (rotation + 2) % 4, zeros))


def test_non_square_images_without_rotation():
    x = torch.randn(4, 3, 8, 12)
    y, labels = build_pretext(["flip", "channel"])(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and set(labels) == {"flip", "channel"}
    assert not torch.equal(y, x)
    with pytest.raises(ValueError, match="square"):
        build_pretext(["lorot"])(x, torch.Generator())


@SETTINGS
@given(seed=st.integers(0, 2**31), B=st.integers(1, 6), size=st.sampled_from([4, 8, 32]))
def test_lorot_i_matches_per_sample(seed, B, size):
    x = torch.randn(B, 3, size, size, generator=torch.Generator().manual_seed(seed))
    pretext = build_pretext(["lorot_i"])
    params = pretext.sample(x, torch.Generator().manual_seed(seed))
    s, top, left = int(params["side"]), int(params["top"]), int(params["left"])
    assert 2 <= s <= size // 2 and 0 <= top < size - s and 0 <= left < size - s
    y, labels = pretext.apply(x, params)
    ref = x.clone()
    for i in range(B):
        square = ref[i][:, top : top + s, left : left + s]
        ref[i][:, top : top + s, left : left + s] = torch.rot90(square, int(labels["lorot_i"][i]), [1, 2])
    assert torch.equal(y, ref)
    back = square_transform(y, params["side"], params["top"], params["left"], (4 - labels["lorot_i"]) % 4)
    assert torch.equal(back, x)


def test_lorot_i_square_size_covers_range():
    x = torch.zeros(1, 3, 32, 32)
    pretext = build_pretext(["lorot_i"])
    g = torch.Generator().manual_seed(0)
    sides = {int(pretext.sample(x, g)["side"]) for _ in range(400)}
    assert sides == set(range(2, 17))


def test_whole_image_rotation():
    x = torch.randn(8, 3, 16, 16)
    y, labels = build_pretext(["rotation"])(x, torch.Generator().manual_seed(3))
    for i in range(8):
        assert torch.equal(y[i], torch.rot90(x[i], int(labels["rotation"][i]), [1, 2]))
    assert torch.equal(rotation_transform(y, (4 - labels["rotation"]) % 4), x)


def test_jigsaw_moves_quadrants_as_labelled():
    from gssl.pretext import TILE_ORDERS, _tile_permutation_table, jigsaw_transform

    assert _tile_permutation_table("cpu").tolist() == [list(p) for p in TILE_ORDERS]
    x = torch.randn(48, 3, 8, 6)
    tiles = torch.arange(48) % 24
    y = jigsaw_transform(x, tiles)
    for i in range(48):
        quads = [x[i, :, r * 4 : (r + 1) * 4, c * 3 : (c + 1) * 3] for r in (0, 1) for c in (0, 1)]
        order = TILE_ORDERS[int(tiles[i])]
        for pos in range(4):
            r, c = divmod(pos, 2)
            assert torch.equal(y[i, :, r * 4 : (r + 1) * 4, c * 3 : (c + 1) * 3], quads[order[pos]])
    assert torch.equal(jigsaw_transform(x, torch.zeros(48, dtype=torch.long)), x)  # label 0 is the identity
    with pytest.raises(ValueError, match="even"):
        jigsaw_transform(torch.zeros(1, 3, 5, 6), torch.zeros(1, dtype=torch.long))


def test_jigsaw_with_rotation_is_jigsaw_then_rotation():
    from gssl.pretext import jigsaw_transform

    x = torch.randn(16, 3, 8, 8)
    pre = build_pretext(["rotation", "jigsaw"])
    params = pre.sample(x, torch.Generator().manual_seed(1))
    y, labels = pre.apply(x, params)
    assert set(labels) == {"rotation", "jigsaw"} and pre.num_classes == {"rotation": 4, "jigsaw": 24}
    assert torch.equal(y, rotation_transform(jigsaw_transform(x, labels["jigsaw"]), labels["rotation"]))
    assert labels["jigsaw"].unique().numel() > 8  # drawn per image
    with pytest.raises(ValueError, match="whole-image"):
        build_pretext(["lorot", "jigsaw"])


def test_sampler_is_deterministic_and_covers_values():
    x = torch.zeros(4096, 3, 4, 4)
    pretext = build_pretext(["lorot", "flip", "channel"])
    a = pretext.sample(x, torch.Generator().manual_seed(7))
    b = pretext.sample(x, torch.Generator().manual_seed(7))
    assert all(torch.equal(a[n], b[n]) for n in a)
    _, labels = pretext.apply(x, a)
    assert torch.bincount(labels["lorot"], minlength=16).min() > 150
    assert torch.bincount(labels["flip"]).tolist()[0] > 1800
    assert torch.bincount(labels["channel"], minlength=6).min() > 500


def test_dtype_and_channels_last_preserved():
    x = torch.randn(4, 3, 8, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    params = {
        "quadrant": draw(0, 4, 4),
        "rotation": draw(1, 4, 4),
        "flip": draw(2, 4, 2),
        "perm": draw(3, 4, 6),
    }
    y = quadrant_transform(x, params["quadrant"], params["rotation"], params["flip"], params["perm"])
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    ref = reference_quadrant(
        x.contiguous(), params["quadrant"], params["rotation"], params["flip"], params["perm"]
    )
    assert torch.equal(y, ref)


def test_registry_and_errors():
    assert {
        n: t.num_classes for n, t in TASKS.items() if n in ("lorot", "flip", "channel", "lorot_i", "rotation")
    } == {"lorot": 16, "flip": 2, "channel": 6, "lorot_i": 4, "rotation": 4}
    assert build_pretext(["lorot", "channel"]).num_classes == {"lorot": 16, "channel": 6}
    with pytest.raises(ValueError, match="lorot, flip, channel"):
        build_pretext(["lorot", "jigsaw"])
    with pytest.raises(ValueError, match="cannot be combined"):
        build_pretext(["lorot", "lorot_i"])
    with pytest.raises(ValueError, match="cannot be combined"):
        build_pretext(["rotation", "flip"])
    with pytest.raises(ValueError, match="even"):
        build_pretext(["flip"])(torch.zeros(2, 3, 7, 8), torch.Generator())
    with pytest.raises(ValueError, match="3 channels"):
        build_pretext(["channel"])(torch.zeros(2, 1, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match="flip_axis"):
        build_pretext(["flip"], flip_axis="X")


def test_new_task_is_one_definition():
    """A joint rotation+flip task (8 classes) on the shared quadrant, defined in one line."""
    task = register_task(
        PretextTask(
            "rotflip", 8, "quadrant", {"rotation": 4, "flip": 2}, lambda p: 2 * p["rotation"] + p["flip"]
        )
    )
    try:
        x = torch.randn(8, 3, 8, 8)
        pretext = build_pretext(["lorot", "rotflip"])
        params = pretext.sample(x, torch.Generator().manual_seed(0))
        y, labels = pretext.apply(x, params)
        assert task.num_classes == pretext.num_classes["rotflip"] == 8
        assert torch.equal(labels["rotflip"] % 2, params["flip"])
        assert torch.equal(labels["rotflip"] // 2, labels["lorot"] % 4)  # shared rotation draw
        assert torch.equal(
            y, reference_quadrant(x, params["quadrant"], params["rotation"], params["flip"], None)
        )
    finally:
        del TASKS["rotflip"]


def test_transform_is_differentiable_wrt_the_image():
    """Adversarial training attacks through the transform: d(sum(y * w))/dx = inverse-transformed w."""
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    q, k, f, c = draw(0, 4, 4), draw(1, 4, 4), draw(2, 4, 2), draw(3, 4, 6)
    w = torch.randn(4, 3, 8, 8)
    (quadrant_transform(x, q, k, f, c) * w).sum().backward()
    assert torch.equal(x.grad, invert_quadrant(w, q, k, f, c))


def test_permutation_table_matches_itertools():
    from gssl.pretext import PERMUTATIONS, _permutation_table

    assert _permutation_table("cpu").tolist() == [list(p) for p in PERMUTATIONS] == [list(p) for p in PERMS]


def test_the_config_groups_tasks_by_the_regions_they_act_on():
    """config.TASK_GROUPS (torch-free, for parse-time checks) must say what the task registry says."""
    from gssl.config import TASK_GROUPS

    by_region = {}
    for name, task in TASKS.items():
        by_region.setdefault(task.region, set()).add(name)
    assert sorted(map(sorted, TASK_GROUPS)) == sorted(map(sorted, by_region.values()))
