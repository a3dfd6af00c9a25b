"""Pretext transforms pinned to hand-written numbers: exact pixels, index tables, draws, errors.

These complement tests/test_pretext.py (which compares against per-sample torch references) with
expectations written out by hand, so that a change in the transform, its validation or its sampling
shows up as a concrete wrong number or message.
"""

import pytest
import torch

from gssl.pretext import (
    TASKS,
    Pretext,
    PretextTask,
    _patch_maps,
    _permutation_table,
    _tile_permutation_table,
    build_pretext,
    jigsaw_transform,
    quadrant_transform,
    register_task,
    rotation_transform,
    square_transform,
)

# 4x4 single-channel image with pixel value = row * 4 + col:
#  0  1  2  3
#  4  5  6  7
#  8  9 10 11
# 12 13 14 15
GRID = torch.arange(16).view(1, 1, 4, 4)
BUILTIN_TASKS = "lorot, flip, channel, lorot_i, rotation, jigsaw"


def long(*v):
    return torch.tensor(v, dtype=torch.long)


def test_lorot_e_rotates_each_quadrant_counter_clockwise_by_hand():
    """Quadrant q (0 TL, 1 TR, 2 BL, 3 BR) rotated by k * 90 degrees counter-clockwise, rest untouched.
    One channel: no channel permutation requested, so C != 3 must be accepted."""
    x = GRID.expand(4, 1, 4, 4)
    y = quadrant_transform(x, long(0, 1, 2, 3), long(1, 2, 3, 0))
    expected = [
        # q=0, k=1: [[0,1],[4,5]] -> [[1,5],[0,4]]
        [[1, 5, 2, 3], [0, 4, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]],
        # q=1, k=2: [[2,3],[6,7]] -> [[7,6],[3,2]]
        [[0, 1, 7, 6], [4, 5, 3, 2], [8, 9, 10, 11], [12, 13, 14, 15]],
        # q=2, k=3: [[8,9],[12,13]] -> [[12,8],[13,9]]
        [[0, 1, 2, 3], [4, 5, 6, 7], [12, 8, 10, 11], [13, 9, 14, 15]],
        # q=3, k=0: identity
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]],
    ]
    assert y.squeeze(1).tolist() == expected


def test_flip_then_rotation_then_channel_permutation_by_hand():
    """Composite on a 1x3x4x4 image (channel c = GRID + 100 c), quadrant 3: flip along H (up-down), rotate
    by 1, then output channel i <- input channel (2, 0, 1)[i] (perm label 4)."""
    x = torch.cat([GRID + 100 * c for c in range(3)], dim=1)
    y = quadrant_transform(x, long(3), long(1), long(1), long(4))
    # BR quadrant [[10,11],[14,15]] -flipH-> [[14,15],[10,11]] -rot90-> [[15,11],[14,10]]
    for out_c, in_c in enumerate((2, 0, 1)):
        off = 100 * in_c
        assert y[0, out_c, 2:, 2:].tolist() == [[15 + off, 11 + off], [14 + off, 10 + off]]
        # outside the quadrant the channel is not permuted
        assert y[0, out_c, :2].tolist() == x[0, out_c, :2].tolist()
    # flip along W instead: [[10,11],[14,15]] -flipW-> [[11,10],[15,14]] -rot90-> [[10,14],[11,15]]
    y = quadrant_transform(x, long(3), long(1), long(1), None, flip_axis="W")
    assert y[0, 0, 2:, 2:].tolist() == [[10, 14], [11, 15]]


def test_patch_index_maps_by_hand():
    """_patch_maps: [2 flips, R rotations, h*w] with R = 4 for square patches and 1 otherwise."""
    maps = _patch_maps(2, 2, "H", "cpu")
    assert maps.tolist() == [
        [[0, 1, 2, 3], [1, 3, 0, 2], [3, 2, 1, 0], [2, 0, 3, 1]],  # no flip, k = 0..3
        [[2, 3, 0, 1], [3, 1, 2, 0], [1, 0, 3, 2], [0, 2, 1, 3]],  # flipped up-down, k = 0..3
    ]
    assert _patch_maps(2, 3, "W", "cpu").tolist() == [[[0, 1, 2, 3, 4, 5]], [[2, 1, 0, 5, 4, 3]]]
    assert _patch_maps(2, 3, "H", "cpu").tolist() == [[[0, 1, 2, 3, 4, 5]], [[3, 4, 5, 0, 1, 2]]]


def test_permutation_tables_written_out():
    """Channel permutations (6, itertools order) and 2x2 jigsaw orders (24, itertools order), by hand."""
    assert _permutation_table("cpu").tolist() == [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ]
    table = _tile_permutation_table("cpu").tolist()
    assert table[:6] == [[0, 1, 2, 3], [0, 1, 3, 2], [0, 2, 1, 3], [0, 2, 3, 1], [0, 3, 1, 2], [0, 3, 2, 1]]
    assert table[6] == [1, 0, 2, 3] and table[11] == [1, 3, 2, 0]
    assert table[17] == [2, 3, 1, 0] and table[23] == [3, 2, 1, 0]


def test_jigsaw_and_whole_image_rotation_by_hand():
    x = GRID
    # jigsaw label 23 = order (3, 2, 1, 0): output quadrant i <- input quadrant 3 - i
    assert jigsaw_transform(x, long(23))[0, 0].tolist() == [
        [10, 11, 8, 9],
        [14, 15, 12, 13],
        [2, 3, 0, 1],
        [6, 7, 4, 5],
    ]
    # whole-image rotation by 1 (counter-clockwise); a single channel is fine (no permutation)
    assert rotation_transform(x, long(1))[0, 0].tolist() == [
        [3, 7, 11, 15],
        [2, 6, 10, 14],
        [1, 5, 9, 13],
        [0, 4, 8, 12],
    ]


def test_lorot_i_on_a_non_square_image_by_hand():
    """LoRot-I rotates a square, so the image itself may be non-square (no 'square patches' error)."""
    x = torch.arange(4 * 6).view(1, 1, 4, 6)
    pre = build_pretext(["lorot_i"])
    params = {"side": long(2), "top": long(1), "left": long(3), "rotation": long(1)}
    y, labels = pre.apply(x, params)
    # square rows 1..2, cols 3..4: [[9,10],[15,16]] -rot90-> [[10,16],[9,15]]
    assert y[0, 0].tolist() == [
        [0, 1, 2, 3, 4, 5],
        [6, 7, 8, 10, 16, 11],
        [12, 13, 14, 9, 15, 17],
        [18, 19, 20, 21, 22, 23],
    ]
    assert list(labels) == ["lorot_i"] and labels["lorot_i"].tolist() == [1]
    # and the sampler accepts a non-square image
    x = torch.zeros(2, 3, 8, 12)
    params = pre.sample(x, torch.Generator().manual_seed(0))
    assert 2 <= int(params["side"]) <= 4 and params["rotation"].shape == (2,)


def test_output_memory_format_follows_the_input():
    """A plain non-contiguous input gives a plain contiguous output (not channels_last)."""
    base = torch.arange(2 * 3 * 4 * 8, dtype=torch.float32).view(2, 3, 4, 8)
    x = base[..., ::2]  # [2, 3, 4, 4], not contiguous in any format
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    outs = [
        quadrant_transform(x, long(0, 3), long(1, 2), long(0, 1), long(0, 5)),
        rotation_transform(x, long(1, 3)),
        jigsaw_transform(x, long(5, 17)),
        square_transform(x, long(2), long(1), long(1), long(1, 2)),
    ]
    for y in outs:
        assert y.is_contiguous()
    assert torch.equal(outs[1][0], torch.rot90(x[0], 1, [1, 2]))


def test_direct_transform_errors_are_exact():
    """quadrant_transform / rotation_transform validate their own input (not only via the sampler)."""
    with pytest.raises(ValueError) as e:
        quadrant_transform(torch.zeros(1, 3, 7, 8), long(0))
    assert str(e.value) == "quadrant tasks need even H and W, got 7x8"
    with pytest.raises(ValueError) as e:
        quadrant_transform(torch.zeros(1, 3, 8, 12), long(0), long(1))
    assert (
        str(e.value) == "rotation needs square patches (rot90 of a non-square patch does not fit), got 8x12"
    )
    with pytest.raises(ValueError) as e:
        quadrant_transform(torch.zeros(1, 1, 8, 8), long(0), None, None, long(1))
    assert str(e.value) == "channel permutation needs 3 channels, got 1"
    with pytest.raises(ValueError) as e:
        quadrant_transform(torch.zeros(1, 3, 8, 8), long(0), None, long(1), flip_axis="X")
    assert str(e.value) == "flip_axis must be 'H' or 'W', got 'X'"
    with pytest.raises(ValueError) as e:
        rotation_transform(torch.zeros(1, 3, 8, 12), long(1))
    assert (
        str(e.value) == "rotation needs square patches (rot90 of a non-square patch does not fit), got 8x12"
    )
    # non-square without rotation is fine for the quadrant ops
    y = quadrant_transform(torch.arange(24).view(1, 1, 4, 6), long(1), None, long(1))
    assert y[0, 0].tolist() == [
        [0, 1, 2, 9, 10, 11],
        [6, 7, 8, 3, 4, 5],
        [12, 13, 14, 15, 16, 17],
        [18, 19, 20, 21, 22, 23],
    ]


def test_sampler_validates_the_image_before_drawing():
    """sample() alone rejects images its tasks cannot transform (not only apply())."""
    g = torch.Generator().manual_seed(0)
    cases = [
        (["flip"], (1, 3, 7, 8), "quadrant tasks need even H and W, got 7x8"),
        (
            ["lorot"],
            (1, 3, 8, 12),
            "rotation needs square patches (rot90 of a non-square patch does not fit), got 8x12",
        ),
        (["channel"], (1, 1, 8, 8), "channel permutation needs 3 channels, got 1"),
        (
            ["rotation"],
            (1, 3, 8, 12),
            "rotation needs square patches (rot90 of a non-square patch does not fit), got 8x12",
        ),
        (["lorot_i"], (1, 3, 3, 8), "LoRot-I needs images of at least 4x4, got 3x8"),
        (["lorot_i"], (1, 3, 8, 2), "LoRot-I needs images of at least 4x4, got 8x2"),
    ]
    for tasks, shape, message in cases:
        with pytest.raises(ValueError) as e:
            build_pretext(tasks).sample(torch.zeros(shape), g)
        assert str(e.value) == message, tasks
    # tasks without a channel permutation accept any channel count
    params = build_pretext(["lorot", "flip"]).sample(torch.zeros(2, 1, 4, 4), g)
    assert set(params) == {"quadrant", "rotation", "flip"}
    y, _ = build_pretext(["rotation"])(torch.zeros(2, 1, 4, 4), g)
    assert y.shape == (2, 1, 4, 4)


def test_quadrant_draws_replay_the_generator_in_documented_order():
    """Draw order: quadrant, then PARAM_ORDER (rotation, flip, perm), each randint(n, (B,)) on the
    generator."""
    B, seed = 12, 123
    params = build_pretext(["channel", "flip", "lorot"]).sample(
        torch.zeros(B, 3, 4, 4), torch.Generator().manual_seed(seed)
    )
    g = torch.Generator().manual_seed(seed)
    expected = {
        n: torch.randint(k, (B,), generator=g)
        for n, k in (("quadrant", 4), ("rotation", 4), ("flip", 2), ("perm", 6))
    }
    assert list(params) == ["quadrant", "rotation", "flip", "perm"]
    for n in expected:
        assert params[n].tolist() == expected[n].tolist(), n


def test_lorot_i_draws_replay_the_generator_and_cover_the_corners():
    """side = randint(2, min(H, W)//2 + 1); u = rand(2); top = floor(u0 (H - side)),
    left = floor(u1 (W - side)); then rotation = randint(4, (B,)).
    All on the given generator, none on the global RNG."""
    H, W, B = 16, 24, 3
    pre = build_pretext(["lorot_i"])
    tops, lefts = set(), set()
    for seed in range(40):
        torch.manual_seed(1000 + seed)  # the global RNG must not matter
        params = pre.sample(torch.zeros(B, 3, H, W), torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        side = int(torch.randint(2, 9, (1,), generator=g))
        u0, u1 = torch.rand(2, generator=g).tolist()
        rotation = torch.randint(4, (B,), generator=g).tolist()
        assert int(params["side"]) == side
        assert int(params["top"]) == int(u0 * (H - side)) and int(params["left"]) == int(u1 * (W - side))
        assert params["rotation"].tolist() == rotation
        tops.add(int(params["top"]))
        lefts.add(int(params["left"]))
    assert max(tops) >= 5 and max(lefts) >= 8  # corners spread over the image, not stuck at 0


def test_sampler_puts_parameters_on_the_image_device():
    """Parameters are drawn on the generator's device (CPU here) and moved to x's device (meta here)."""
    x = torch.empty(4, 3, 8, 8, device="meta")
    for tasks in (["lorot", "flip", "channel"], ["lorot_i"], ["rotation", "jigsaw"]):
        params = build_pretext(tasks).sample(x, torch.Generator().manual_seed(0))
        assert {str(p.device) for p in params.values()} == {"meta"}, tasks


def test_results_do_not_depend_on_the_default_device():
    """Helper tensors are made on the input's device: a different torch default device (here "meta",
    as a stand-in for torch.set_default_device("cuda")) must not change CPU results."""
    x = torch.cat([GRID + 100 * c for c in range(3)], dim=1).expand(2, 3, 4, 4).float()
    q, k, f, c = long(1, 2), long(1, 3), long(1, 0), long(4, 1)
    tiles, side, top, left = long(7, 22), long(2), long(1), long(2)
    pre_q, pre_i, pre_r = (
        build_pretext(["lorot", "flip", "channel"]),
        build_pretext(["lorot_i"]),
        build_pretext(["jigsaw"]),
    )

    def everything():
        outputs = [
            quadrant_transform(x, q, k, f, c),
            quadrant_transform(x, q),
            rotation_transform(x, k),
            jigsaw_transform(x, tiles),
            square_transform(x, side, top, left, k),
            _permutation_table("cpu"),
            _tile_permutation_table("cpu"),
            _patch_maps(2, 2, "W", "cpu"),
        ]
        return outputs, [pre.sample(x, torch.Generator().manual_seed(3)) for pre in (pre_q, pre_i, pre_r)]

    expected, draws = everything()
    with torch.device("meta"):
        got, got_draws = everything()
    for a, b in zip(expected, got):
        assert b.device.type == "cpu" and torch.equal(a, b)
    for a, b in zip(draws, got_draws):
        assert a.keys() == b.keys() and all(b[n].device.type == "cpu" and torch.equal(a[n], b[n]) for n in a)


def test_register_task_rejects_a_bad_region_or_a_bad_draw():
    before = dict(TASKS)
    for bad in (
        PretextTask("bad_region", 2, "pixel", {"flip": 2}, lambda p: p["flip"]),
        PretextTask("bad_draw", 2, "quadrant", {"shear": 2}, lambda p: p["shear"]),
    ):
        with pytest.raises(ValueError) as e:
            register_task(bad)
        assert str(e.value) == (
            f"task {bad.name!r}: region must be in ('quadrant', 'square', 'image'), "
            "draws in ('rotation', 'flip', 'perm', 'tiles')"
        )
    assert TASKS == before


def test_pretext_defaults_and_task_list_errors():
    """Pretext's own default flip axis is "H"; unknown, empty and repeated task lists are rejected."""
    assert Pretext(["flip"]).flip_axis == "H"
    assert (
        repr(Pretext(["lorot", "flip"]))
        == "Pretext(tasks=['lorot', 'flip'], region='quadrant', flip_axis='H')"
    )
    for tasks in (["nope"], ["flip", "nope"], [], ["flip", "flip"]):
        with pytest.raises(ValueError) as e:
            Pretext(tasks)
        assert str(e.value) == f"bad pretext tasks {tasks}; valid (each at most once): {BUILTIN_TASKS}"
    with pytest.raises(ValueError) as e:
        Pretext(["flip", "rotation"])
    assert str(e.value) == (
        "tasks ['flip', 'rotation'] act on different regions (image, quadrant); quadrant tasks (lorot, flip, "
        "channel) cannot be combined with lorot_i or the whole-image tasks (rotation, jigsaw)"
    )


def test_tasks_sharing_a_parameter_must_agree_on_its_range():
    register_task(PretextTask("rot2", 2, "quadrant", {"rotation": 2}, lambda p: p["rotation"]))
    try:
        with pytest.raises(ValueError) as e:
            Pretext(["lorot", "rot2"])
        assert str(e.value) == "tasks ['lorot', 'rot2'] draw 'rotation' with different ranges"
    finally:
        del TASKS["rot2"]
