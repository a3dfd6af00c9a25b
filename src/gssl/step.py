"""The training step's machinery for the fast path: a compiled function with an eager fallback, and
a non-finite-loss watch that does not force a host synchronisation per step.

Compilation (`torch.compile`, CUDA by default) sees only full batches, so shapes stay static and CUDA
graphs can be used; the last partial batch of an epoch runs eagerly instead of recompiling. If
compiling or running the compiled function fails, gssl warns once and goes on eagerly.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor


class Compiled:
    """`fn` compiled for inputs whose first dimension is `batch`; anything else, or any failure, eager."""

    def __init__(self, fn, *, enabled: bool, batch: int, mode: str = "default", what: str = "step",
                 backend="inductor"):
        self.eager, self.batch, self.what = fn, batch, what
        kw = {"mode": None if mode == "default" else mode} if backend == "inductor" else {}
        self.compiled = torch.compile(fn, backend=backend, dynamic=False, **kw) if enabled else None
        self.fallbacks = 0

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def __call__(self, x: Tensor, *args):
        if self.compiled is not None and x.shape[0] == self.batch:
            try:
                return self.compiled(x, *args)
            except Exception as e:  # noqa: BLE001 - any compiler failure: keep training, eagerly
                warnings.warn(f"torch.compile of the {self.what} failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); continuing without compilation. "
                              "Set compile=false to skip the attempt", RuntimeWarning, stacklevel=2)
                self.compiled, self.fallbacks = None, self.fallbacks + 1
        return self.eager(x, *args)


class FiniteWatch:
    """Remembers, on the device, the first step whose loss was not finite and the loss terms then.

    `update` adds a few tiny device ops and no synchronisation; `first_bad()` reads the result (one
    synchronisation), so the engine calls it every step on CPU, where it costs nothing, and once per
    epoch on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.step = torch.full((), -1, dtype=torch.long, device=self.device)
        self.terms: dict[str, Tensor] = {}

    def update(self, step: int, loss: Tensor, stats: dict[str, Tensor]) -> None:
        new = (self.step < 0) & ~torch.isfinite(loss.detach())
        self.step = torch.where(new, step, self.step)
        for k, v in stats.items():
            if not k.endswith("correct"):
                v = v.detach().float().mean()
                self.terms[k] = torch.where(new, v, self.terms.get(k, torch.zeros_like(v)))

    def first_bad(self) -> tuple[int, dict[str, float]] | None:
        step = int(self.step)
        if step < 0:
            return None
        return step, {k: float(v) for k, v in self.terms.items()}
