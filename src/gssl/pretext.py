"""Pretext tasks: localisable transforms of an image region, and the labels to predict them.

SPEC section 2. The G-SSL tasks share one random quadrant per sample (2x2 grid: 0 top-left,
1 top-right, 2 bottom-left, 3 bottom-right) and are applied to it in the order of the authors' code:

    flip (label f, 2 classes)  ->  rot90 by k in the H-W plane, counter-clockwise as torch.rot90
    (LoRot-E, label 4*q + k, 16 classes)  ->  channel permutation c in itertools.permutations((0,1,2))
    order, patch = patch[perm[c]] (label c, 6 classes).

Baselines: LoRot-I (one random square per batch, side 2..W/2, rotation k per sample, label k) and
whole-image rotation (label k).

Implementation: every task here only moves pixels, so the whole composite is one per-sample pixel
permutation. We compute, for each output pixel, where it comes from (undoing the ops in reverse
order) and do a single `gather`. No Python loop over samples, no `.item()`, no host sync; the
same code serves quadrants, LoRot-I's square and the whole image, and it traces under torch.compile.

Flip axis: the long-tailed reference flips the patch along H (`torch.fliplr` of a [C, h, w] tensor
reverses dim 1, i.e. up-down); the other pipelines flip along W. Default "H" because the headline
protocol (Table 1) is the long-tailed one; pass flip_axis="W" for the others.
"""

import itertools
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

PERMUTATIONS = tuple(itertools.permutations((0, 1, 2)))  # index 0 is the identity
PARAM_ORDER = ("rotation", "flip", "perm")  # draw order; also the order ops are applied in
REGIONS = ("quadrant", "square", "image")


def _region_transform(
    x: Tensor,
    top: Tensor,
    left: Tensor,
    height,
    width,
    rotation: Optional[Tensor] = None,
    flip: Optional[Tensor] = None,
    perm: Optional[Tensor] = None,
    flip_axis: str = "H",
) -> Tensor:
    """Flip, then rotate, then permute channels inside the rectangle [top, top+height) x
    [left, left+width) of each image; pixels outside are copied. Region bounds are [B] or [1]
    tensors (or ints for height/width); rotation needs height == width. None = op not applied."""
    if flip_axis not in ("H", "W"):
        raise ValueError(f"flip_axis must be 'H' or 'W', got {flip_axis!r}")
    B, C, H, W = x.shape
    dev = x.device

    def col(t):  # [B] or [1] tensor (or int) -> broadcastable [B|1, 1, 1]
        return t.view(-1, 1, 1) if isinstance(t, Tensor) else t

    top, left, height, width = col(top), col(left), col(height), col(width)
    i = torch.arange(H, device=dev).view(1, H, 1)
    j = torch.arange(W, device=dev).view(1, 1, W)
    u, v = i - top, j - left  # output pixel in region coordinates
    inside = (u >= 0) & (u < height) & (v >= 0) & (v < width)
    a, b = u, v  # will become the source pixel of (u, v) in the region before any op
    if rotation is not None:
        # out = rot90(P, k): out[u, v] = P[v, s-1-u] (k=1), P[s-1-u, s-1-v] (k=2), P[s-1-v, u] (k=3)
        k, s1 = col(rotation), height - 1
        a = torch.where(k == 0, u, torch.where(k == 1, v, torch.where(k == 2, s1 - u, s1 - v)))
        b = torch.where(k == 0, v, torch.where(k == 1, s1 - u, torch.where(k == 2, s1 - v, u)))
    if flip is not None:
        f = col(flip).bool()
        if flip_axis == "H":
            a = torch.where(f, height - 1 - a, a)
        else:
            b = torch.where(f, width - 1 - b, b)
    pixel = torch.where(inside, (a + top) * W + (b + left), i * W + j)  # [B, H, W]
    channel = torch.arange(C, device=dev).view(1, C, 1, 1)
    if perm is not None:
        table = torch.tensor(PERMUTATIONS, device=dev)  # out channel i <- in channel perm[c][i]
        channel = torch.where(inside.unsqueeze(1), table[perm].view(-1, C, 1, 1), channel)
    index = (channel * (H * W) + pixel.unsqueeze(1)).expand(B, C, H, W).reshape(B, C * H * W)
    out = x.reshape(B, C * H * W).gather(1, index).view(B, C, H, W)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _check(x: Tensor, region: str, rotation: bool, perm: bool) -> None:
    _, C, H, W = x.shape
    if region == "quadrant" and (H % 2 or W % 2):
        raise ValueError(f"quadrant tasks need even H and W, got {H}x{W}")
    if rotation and region != "square" and H != W:
        raise ValueError(f"rotation needs square patches (rot90 of a non-square patch does not fit), got {H}x{W}")
    if perm and C != 3:
        raise ValueError(f"channel permutation needs 3 channels, got {C}")
    if region == "square" and min(H, W) < 4:
        raise ValueError(f"LoRot-I needs images of at least 4x4, got {H}x{W}")


def quadrant_transform(
    x: Tensor,
    quadrant: Tensor,
    rotation: Optional[Tensor] = None,
    flip: Optional[Tensor] = None,
    perm: Optional[Tensor] = None,
    *,
    flip_axis: str = "H",
) -> Tensor:
    """Deterministic composite transform. x: [B, C, H, W] (H, W even); per-sample integer tensors
    quadrant (0..3), rotation (0..3, needs H == W), flip (0/1), perm (0..5, needs C == 3).
    A None parameter leaves that op out (equivalent to zeros)."""
    _check(x, "quadrant", rotation is not None, perm is not None)
    _, _, H, W = x.shape
    h, w = H // 2, W // 2
    return _region_transform(
        x, (quadrant // 2) * h, (quadrant % 2) * w, h, w, rotation, flip, perm, flip_axis
    )


def square_transform(x: Tensor, side: Tensor, top: Tensor, left: Tensor, rotation: Tensor) -> Tensor:
    """LoRot-I: rotate the square [top, top+side) x [left, left+side) of each image by its own k.
    side/top/left: [1] (one square per batch, as the reference) or [B] tensors."""
    return _region_transform(x, top, left, side, side, rotation)


def rotation_transform(x: Tensor, rotation: Tensor) -> Tensor:
    """Whole-image rotation (RotNet/SSP): rot90 of each square image by its own k."""
    _check(x, "image", True, False)
    zero = torch.zeros(1, dtype=torch.long, device=x.device)
    return _region_transform(x, zero, zero, x.shape[2], x.shape[3], rotation)


@dataclass(frozen=True)
class PretextTask:
    """One pretext task: which region it acts on, which transform parameters it draws (name ->
    number of values, from PARAM_ORDER) and how its label is made from the drawn parameters.
    Tasks on the same region share parameters of the same name (e.g. the quadrant). A new task
    made of these ops is one `register_task(PretextTask(...))` line; a new op needs a branch in
    `_region_transform`."""

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


register_task(PretextTask("lorot", 16, "quadrant", {"rotation": 4},
                          lambda p: 4 * p["quadrant"] + p["rotation"], "LoRot-E: quadrant and rotation"))
register_task(PretextTask("flip", 2, "quadrant", {"flip": 2}, lambda p: p["flip"], "quadrant flipped?"))
register_task(PretextTask("channel", 6, "quadrant", {"perm": 6}, lambda p: p["perm"],
                          "channel permutation of the quadrant"))
register_task(PretextTask("lorot_i", 4, "square", {"rotation": 4}, lambda p: p["rotation"],
                          "LoRot-I: rotation of one random square per batch"))
register_task(PretextTask("rotation", 4, "image", {"rotation": 4}, lambda p: p["rotation"],
                          "whole-image rotation (RotNet/SSP)"))


class Pretext:
    """Sampler + transform for a set of tasks on one shared region.

    `sample(x, generator)` draws the parameters (the only random part: keep it outside
    torch.compile), `apply(x, params)` is pure. `__call__` does both and returns
    (transformed x, {task: labels})."""

    def __init__(self, tasks: list[str], flip_axis: str = "H"):
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"bad pretext tasks {list(tasks)}; valid (each at most once): {', '.join(TASKS)}")
        if flip_axis not in ("H", "W"):
            raise ValueError(f"flip_axis must be 'H' or 'W', got {flip_axis!r}")
        regions = {TASKS[t].region for t in tasks}
        if len(regions) > 1:
            raise ValueError(
                f"tasks {list(tasks)} act on different regions ({', '.join(sorted(regions))}); "
                "quadrant tasks (lorot, flip, channel) cannot be combined with lorot_i or rotation"
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
            x = quadrant_transform(x, params["quadrant"], ops["rotation"], ops["flip"], ops["perm"],
                                   flip_axis=self.flip_axis)
        elif self.region == "square":
            x = square_transform(x, params["side"], params["top"], params["left"], ops["rotation"])
        else:
            x = rotation_transform(x, ops["rotation"])
        return x, {t: TASKS[t].label(params) for t in self.tasks}

    def __call__(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        return self.apply(x, self.sample(x, generator))

    def __repr__(self) -> str:
        return f"Pretext(tasks={self.tasks}, region={self.region!r}, flip_axis={self.flip_axis!r})"


def build_pretext(tasks: list[str], flip_axis: str = "H") -> Pretext:
    return Pretext(list(tasks), flip_axis)
