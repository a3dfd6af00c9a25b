"""Pretext tasks: localisable transforms of an image region, and the labels to predict them.

SPEC section 2. The G-SSL tasks share one random quadrant per sample (2x2 grid: 0 top-left,
1 top-right, 2 bottom-left, 3 bottom-right) and are applied to it in the order of the authors' code:

    flip (label f, 2 classes)  ->  rot90 by k in the H-W plane, counter-clockwise as torch.rot90
    (LoRot-E, label 4*q + k, 16 classes)  ->  channel permutation c in itertools.permutations((0,1,2))
    order, patch = patch[perm[c]] (label c, 6 classes).

Baselines: LoRot-I (one random square per batch, side 2..W/2, rotation k per sample, label k) and
whole-image rotation (label k). For contrastive pre-training (ScatSimCLR's regularisers): a 2x2 jigsaw
(the four quadrants permuted, label = index of the permutation in itertools.permutations(range(4))
order, 24 classes), on the whole image and combinable with whole-image rotation (jigsaw first).

Implementation: every task here only moves pixels, so the composite is one per-sample pixel
permutation of the quadrant. We pull every sample's quadrant out with advanced indexing, map each
output pixel to its source with small index tables (built once per call by applying torch's own
flip/rot90 to a grid of pixel indices), do one `gather`, and write the quadrants back. No Python loop
over samples, no `.item()`, no host sync; it traces under torch.compile without graph breaks.
LoRot-I's square has a random size (data, not a shape), so it computes each pixel's source
arithmetically and gathers over the whole image.

Flip axis: the long-tailed reference flips the patch along H (`torch.fliplr` of a [C, h, w] tensor
reverses dim 1, i.e. up-down); the other pipelines flip along W. Default "H" because the headline
protocol (Table 1) is the long-tailed one; pass flip_axis="W" for the others.
"""

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

PERMUTATIONS = tuple(itertools.permutations((0, 1, 2)))  # index 0 is the identity
TILE_ORDERS = tuple(itertools.permutations(range(4)))  # the 2x2 jigsaw's labels; index 0 is the identity
PARAM_ORDER = (
    "rotation",
    "flip",
    "perm",
    "tiles",
)  # draw order (ops are applied tiles, flip, rotation, perm)
REGIONS = ("quadrant", "square", "image")


def _permutation_table(device) -> Tensor:
    """PERMUTATIONS as a [6, 3] tensor, computed on `device` (torch.tensor(PERMUTATIONS,
    device="cuda") would copy from the host and synchronise every step). Lexicographic order:
    c // 2 picks the first channel, c % 2 swaps the remaining two."""
    c = torch.arange(6, device=device)
    first = c // 2
    lo = (first == 0).long()  # smaller of the two channels left: 1 if channel 0 is taken, else 0
    hi = 2 - (first == 2).long()  # larger one: 1 if channel 2 is taken, else 2
    odd = (c % 2).bool()
    return torch.stack([first, torch.where(odd, hi, lo), torch.where(odd, lo, hi)], dim=1)


def _tile_permutation_table(device) -> Tensor:
    """The 24 permutations of range(4) as a [24, 4] tensor in itertools order, computed on `device`
    (no host copy): the Lehmer code c // 6, c // 2 % 3, c % 2, 0 picks the k-th tile still unused."""
    c = torch.arange(24, device=device)
    free = torch.ones(24, 4, dtype=torch.bool, device=device)
    cols = []
    for k in (c // 6, c // 2 % 3, c % 2, torch.zeros_like(c)):
        pick = ((free.long().cumsum(1) == (k + 1).unsqueeze(1)) & free).long().argmax(1)
        cols.append(pick)
        free = free & (torch.arange(4, device=device) != pick.unsqueeze(1))
    return torch.stack(cols, dim=1)


def _like(out: Tensor, x: Tensor) -> Tensor:
    """Give `out` the memory format of `x` (channels_last in, channels_last out). The plain layout is
    asked first: inside vmap (gssl.packed) only that question can be asked, and packed batches have it."""
    if x.is_contiguous():
        return out
    if x.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out


def _patch_maps(h: int, w: int, flip_axis: str, device) -> Tensor:
    """[2, R, h*w] source-pixel maps of a h x w patch for each (flip f, rotation k): the output
    pixel i of rot90(flip(P), k) is pixel maps[f, k, i] of P. Built by applying torch's own
    flip/rot90 to a grid of pixel indices, so the semantics are torch's by construction.
    R = 4 for square patches, 1 (no rotation) otherwise."""
    grid = torch.arange(h * w, device=device).view(h, w)
    maps = []
    for flipped in (grid, grid.flip(0 if flip_axis == "H" else 1)):
        rots = range(4) if h == w else range(1)
        maps.append(torch.stack([torch.rot90(flipped, k, (0, 1)).reshape(-1) for k in rots]))
    return torch.stack(maps)


def _transform_patches(
    patch: Tensor,
    rotation: Tensor | None,
    flip: Tensor | None,
    perm: Tensor | None,
    flip_axis: str,
) -> Tensor:
    """Flip, then rotate, then permute channels of each patch [B, C, h, w] with its own
    parameters ([B] integer tensors, None = op left out): one gather over the flattened patches."""
    if flip_axis not in ("H", "W"):
        raise ValueError(f"flip_axis must be 'H' or 'W', got {flip_axis!r}")
    B, C, h, w = patch.shape
    dev = patch.device
    zeros = torch.zeros(B, dtype=torch.long, device=dev)
    maps = _patch_maps(h, w, flip_axis, dev)
    spatial = maps[zeros if flip is None else flip, zeros if rotation is None else rotation]  # [B, hw]
    if perm is None:
        channel = torch.arange(C, device=dev).expand(B, C)
    else:  # output channel i <- input channel PERMUTATIONS[c][i]
        channel = _permutation_table(dev)[perm]
    index = (channel.unsqueeze(2) * (h * w) + spatial.unsqueeze(1)).view(B, C * h * w)
    return patch.reshape(B, C * h * w).gather(1, index).view(B, C, h, w)


def _rotate_square(x: Tensor, side: Tensor, top: Tensor, left: Tensor, rotation: Tensor) -> Tensor:
    """rot90 by rotation[b] of the square [top, top+side) x [left, left+side) of every image.
    side/top/left are tensors ([1] or [B]): the square's size is data, not a shape, so instead of
    slicing we compute each output pixel's source (undoing the rotation) and gather."""
    B, C, H, W = x.shape
    side, top, left, k = (t.view(-1, 1, 1) for t in (side, top, left, rotation))
    i = torch.arange(H, device=x.device).view(1, H, 1)
    j = torch.arange(W, device=x.device).view(1, 1, W)
    u, v = i - top, j - left  # position inside the square
    inside = (u >= 0) & (u < side) & (v >= 0) & (v < side)
    # out = rot90(P, k): out[u, v] = P[v, s-1-u] (k=1), P[s-1-u, s-1-v] (k=2), P[s-1-v, u] (k=3)
    s1 = side - 1
    a = torch.where(k == 0, u, torch.where(k == 1, v, torch.where(k == 2, s1 - u, s1 - v)))
    b = torch.where(k == 0, v, torch.where(k == 1, s1 - u, torch.where(k == 2, s1 - v, u)))
    pixel = torch.where(inside, (a + top) * W + (b + left), i * W + j).view(-1, 1, H * W)
    out = x.reshape(B, C, H * W).gather(2, pixel.expand(B, C, H * W)).view(B, C, H, W)
    return _like(out, x)


def _check(x: Tensor, region: str, rotation: bool, perm: bool) -> None:
    _, C, H, W = x.shape
    if region == "quadrant" and (H % 2 or W % 2):
        raise ValueError(f"quadrant tasks need even H and W, got {H}x{W}")
    if rotation and region != "square" and H != W:
        raise ValueError(
            f"rotation needs square patches (rot90 of a non-square patch does not fit), got {H}x{W}"
        )
    if perm and C != 3:
        raise ValueError(f"channel permutation needs 3 channels, got {C}")
    if region == "square" and min(H, W) < 4:
        raise ValueError(f"LoRot-I needs images of at least 4x4, got {H}x{W}")


def quadrant_transform(
    x: Tensor,
    quadrant: Tensor,
    rotation: Tensor | None = None,
    flip: Tensor | None = None,
    perm: Tensor | None = None,
    *,
    flip_axis: str = "H",
) -> Tensor:
    """Deterministic composite transform. x: [B, C, H, W] (H, W even); per-sample integer tensors
    quadrant (0..3), rotation (0..3, needs H == W), flip (0/1), perm (0..5, needs C == 3).
    A None parameter leaves that op out (equivalent to zeros)."""
    _check(x, "quadrant", rotation is not None, perm is not None)
    B, C, H, W = x.shape
    h, w = H // 2, W // 2
    xc = x.contiguous()
    b, qr, qc = torch.arange(B, device=x.device), quadrant // 2, quadrant % 2
    # Quadrant (qr, qc) of image b is grid[b, :, qr, :, qc, :]: advanced indexing = gather and
    # index_put, no host sync, and differentiable w.r.t. x (adversarial training needs that).
    patch = xc.view(B, C, 2, h, 2, w)[b, :, qr, :, qc, :]  # [B, C, h, w]
    out = xc.clone()
    out.view(B, C, 2, h, 2, w)[b, :, qr, :, qc, :] = _transform_patches(
        patch, rotation, flip, perm, flip_axis
    )
    return _like(out, x)


def square_transform(x: Tensor, side: Tensor, top: Tensor, left: Tensor, rotation: Tensor) -> Tensor:
    """LoRot-I: rotate the square [top, top+side) x [left, left+side) of each image by its own k.
    side/top/left: [1] (one square per batch, as the reference) or [B] tensors."""
    return _rotate_square(x, side, top, left, rotation)


def rotation_transform(x: Tensor, rotation: Tensor) -> Tensor:
    """Whole-image rotation (RotNet/SSP): rot90 of each square image by its own k."""
    _check(x, "image", True, False)
    return _like(_transform_patches(x.contiguous(), rotation, None, None, "H"), x)


def jigsaw_transform(x: Tensor, tiles: Tensor) -> Tensor:
    """2x2 jigsaw: output quadrant i (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) of image b
    is input quadrant PERM[tiles[b]][i], PERM = itertools.permutations(range(4)); index 0 is the identity."""
    B, C, H, W = x.shape
    if H % 2 or W % 2:
        raise ValueError(f"the 2x2 jigsaw needs even H and W, got {H}x{W}")
    h, w = H // 2, W // 2
    quads = x.contiguous().view(B, C, 2, h, 2, w).permute(0, 2, 4, 1, 3, 5).reshape(B, 4, C, h, w)
    src = _tile_permutation_table(x.device)[tiles]  # [B, 4]
    out = quads[torch.arange(B, device=x.device).unsqueeze(1), src]  # [B, 4, C, h, w]
    out = out.view(B, 2, 2, C, h, w).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)
    return _like(out, x)


@dataclass(frozen=True)
class PretextTask:
    """One pretext task: which region it acts on, which transform parameters it draws (name ->
    number of values, from PARAM_ORDER) and how its label is made from the drawn parameters.
    Tasks on the same region share parameters of the same name (e.g. the quadrant). A new task
    made of these ops is one `register_task(PretextTask(...))` line; a new op needs its index map
    in `_transform_patches`."""

    name: str
    num_classes: int
    region: str
    draws: dict = field(default_factory=dict)
    label: Callable[[dict], Tensor] = None
    doc: str = ""


TASKS: dict[str, PretextTask] = {}


def register_task(task: PretextTask) -> PretextTask:
    if task.region not in REGIONS or any(p not in PARAM_ORDER for p in task.draws):
        raise ValueError(f"task {task.name!r}: region must be in {REGIONS}, draws in {PARAM_ORDER}")
    TASKS[task.name] = task
    return task


register_task(
    PretextTask(
        "lorot",
        16,
        "quadrant",
        {"rotation": 4},
        lambda p: 4 * p["quadrant"] + p["rotation"],
        "LoRot-E: quadrant and rotation",
    )
)
register_task(PretextTask("flip", 2, "quadrant", {"flip": 2}, lambda p: p["flip"], "quadrant flipped?"))
register_task(
    PretextTask(
        "channel", 6, "quadrant", {"perm": 6}, lambda p: p["perm"], "channel permutation of the quadrant"
    )
)
register_task(
    PretextTask(
        "lorot_i",
        4,
        "square",
        {"rotation": 4},
        lambda p: p["rotation"],
        "LoRot-I: rotation of one random square per batch",
    )
)
register_task(
    PretextTask(
        "rotation", 4, "image", {"rotation": 4}, lambda p: p["rotation"], "whole-image rotation (RotNet/SSP)"
    )
)
register_task(
    PretextTask(
        "jigsaw",
        24,
        "image",
        {"tiles": 24},
        lambda p: p["tiles"],
        "2x2 jigsaw: which permutation of the four quadrants",
    )
)


class Pretext:
    """Sampler + transform for a set of tasks on one shared region.

    `sample(x, generator)` draws the parameters (the only random part: keep it outside
    torch.compile), `apply(x, params)` is pure. `__call__` does both and returns
    (transformed x, {task: labels})."""

    def __init__(self, tasks: list[str], flip_axis: str = "H"):
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(
                f"bad pretext tasks {list(tasks)}; valid (each at most once): {', '.join(TASKS)}"
            )
        if flip_axis not in ("H", "W"):
            raise ValueError(f"flip_axis must be 'H' or 'W', got {flip_axis!r}")
        regions = {TASKS[t].region for t in tasks}
        if len(regions) > 1:
            raise ValueError(
                f"tasks {list(tasks)} act on different regions ({', '.join(sorted(regions))}); "
                "quadrant tasks (lorot, flip, channel) cannot be combined with lorot_i or the whole-image "
                "tasks (rotation, jigsaw)"
            )
        draws: dict[str, int] = {}
        for t in tasks:
            for p, n in TASKS[t].draws.items():
                if draws.setdefault(p, n) != n:
                    raise ValueError(f"tasks {list(tasks)} draw {p!r} with different ranges")
        self.tasks = list(tasks)
        self.num_classes = {t: TASKS[t].num_classes for t in tasks}
        self.region = regions.pop()
        self.draws = {p: draws[p] for p in PARAM_ORDER if p in draws}
        self.flip_axis = flip_axis

    def sample(self, x: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Per-sample parameters, drawn on the generator's device and moved to x's device."""
        B, _, H, W = x.shape
        _check(x, self.region, "rotation" in self.draws, "perm" in self.draws)
        dev = generator.device

        def move(t):
            return t.to(x.device, non_blocking=True)

        params = {}
        if self.region == "quadrant":
            params["quadrant"] = move(torch.randint(4, (B,), generator=generator, device=dev))
        elif self.region == "square":
            # Reference (LoRot-I): r = randint(2, W//2 + 1), corner = randint(W - r): the last
            # possible position is never drawn; kept. One square for the whole batch.
            side = torch.randint(2, min(H, W) // 2 + 1, (1,), generator=generator, device=dev)
            u = torch.rand(2, generator=generator, device=dev)
            params["side"] = move(side)
            params["top"] = move((u[:1] * (H - side)).long())
            params["left"] = move((u[1:] * (W - side)).long())
        for p, n in self.draws.items():
            params[p] = move(torch.randint(n, (B,), generator=generator, device=dev))
        return params

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        ops = {p: params.get(p) for p in PARAM_ORDER}
        if self.region == "quadrant":
            x = quadrant_transform(
                x, params["quadrant"], ops["rotation"], ops["flip"], ops["perm"], flip_axis=self.flip_axis
            )
        elif self.region == "square":
            x = square_transform(x, params["side"], params["top"], params["left"], ops["rotation"])
        else:
            if ops["tiles"] is not None:
                x = jigsaw_transform(x, ops["tiles"])
            if ops["rotation"] is not None:
                x = rotation_transform(x, ops["rotation"])
        return x, {t: TASKS[t].label(params) for t in self.tasks}

    def __call__(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        return self.apply(x, self.sample(x, generator))

    def __repr__(self) -> str:
        return f"Pretext(tasks={self.tasks}, region={self.region!r}, flip_axis={self.flip_axis!r})"


def build_pretext(tasks: list[str], flip_axis: str = "H") -> Pretext:
    return Pretext(list(tasks), flip_axis)
