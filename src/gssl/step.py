"""The training step's machinery for the fast path: a compiled function with an eager fallback, the
numeric precision, and a non-finite-loss watch that does not force a host synchronisation per step.

Compilation (`torch.compile`) sees only full batches, so shapes stay static and CUDA graphs can be used;
the last partial batch of an epoch runs eagerly instead of recompiling. If compiling or running the
compiled function fails, or its loss comes back without a gradient, gssl warns once and goes on eagerly.

Why a step's statistics leave the compiled graph packed into one fresh vector: a graph whose outputs
alias each other loses the loss's gradient. With no pretext task, `loss_cls + 0` is folded to
`loss_cls`, and `stats["cls_loss"] = loss_cls.detach()` is functionalised to an alias of the same
buffer; AOTAutograd then returns the loss as an alias of a non-differentiable output, and the first
`backward()` fails ("element 0 of tensors does not require grad"). `torch.stack` of the statistics
allocates a new buffer, so no statistic can alias the loss whatever the step computes.

Gradients inside the step: the gcs and gradnorm gates (gssl.gating) call torch.autograd.grad in the
step itself (the cosines of the tasks' gradients, the gradient norms at the feature). Dynamo breaks the
graph there by default, and the compiled step then failed outright (the differentiated tensor crossed the
break); with its `trace_autograd_ops` on, which `Compiled` sets while tracing a step, those calls are
traced into the one graph. A step without them traces exactly as before.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss, say); the last good checkpoint is kept."""


PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """The config's `precision`; null means bf16 autocast on CUDA and float32 (as the reference) on CPU."""
    return precision or ("bf16" if device.type == "cuda" else "fp32")


def autocast(device_type: str, precision: str):
    """Autocast to the precision's dtype; a no-op for fp32."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def float32_region(device_type: str):
    """Autocast switched off, for what must compute in float32 under autocast; a no-op outside autocast,
    since AOTAutograd's cache refuses a graph that enters an autocast region, and every float32 run (each
    CPU run) would then trace its compiled step anew in each new process."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def packed_step(step, stat_shape: tuple[int, ...] = ()):
    """`step(...) -> (loss, stats)` as `(loss, keys, values)`, values one new float32 tensor (see above):
    [S] for scalar statistics, [S, K] for a pack's [K] vectors (gssl.packed)."""

    def packed(*args, **kwargs):
        loss, stats = step(*args, **kwargs)
        return (
            loss,
            tuple(stats),
            torch.stack([v.detach().float().reshape(stat_shape) for v in stats.values()]),
        )

    return packed


def _dynamo_has(flag: str) -> bool:
    """Whether this torch's dynamo has a config flag; imported here, not at the top, since importing
    torch._dynamo costs seconds that an eager run (most CPU runs, every test's subprocess) never needs."""
    import torch._dynamo

    return hasattr(torch._dynamo.config, flag)


class Compiled:
    """`fn` compiled for inputs whose first dimension is `batch`; anything else, or any failure, eager.

    what="step": `fn` returns (loss, stats); the compiled graph returns them packed (`packed_step`), and a
    loss without grad_fn while grad is enabled counts as a failure. Any other `what` (evaluation): the
    outputs are copied, since under CUDA graphs they live in a static buffer the next replay overwrites.
    `members`: the step of a pack (gssl.packed): x is [members, batch, ...], each statistic [members]."""

    def __init__(
        self,
        fn,
        *,
        enabled: bool,
        batch: int,
        mode: str = "default",
        what: str = "step",
        backend="inductor",
        members: int | None = None,
    ):
        self.eager, self.batch, self.what = fn, batch, what
        self.batch_dim = 0 if members is None else 1
        kw = {"mode": None if mode == "default" else mode} if backend == "inductor" else {}
        target = packed_step(fn, () if members is None else (members,)) if what == "step" else fn
        self.compiled = torch.compile(target, backend=backend, dynamic=False, **kw) if enabled else None
        if self.compiled is not None and what == "step" and _dynamo_has("trace_autograd_ops"):
            # see "Gradients inside the step" above; a torch without the flag compiles gcs/gradnorm steps
            # with a graph break (or falls back to eager), every other step as before
            self.compiled = torch._dynamo.config.patch(trace_autograd_ops=True)(self.compiled)
        self.fallbacks = 0
        self.compiled_calls = 0

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def __call__(self, x: Tensor, *args, **kwargs):
        if self.compiled is not None and x.shape[self.batch_dim] == self.batch:
            try:
                out = self._run_compiled(x, *args, **kwargs)
                self.compiled_calls += 1
                return out
            except Exception as e:  # noqa: BLE001 - any compiler failure: keep training, eagerly
                self._give_up(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        return self.eager(x, *args, **kwargs)

    def _run_compiled(self, x: Tensor, *args, **kwargs):
        if self.what != "step":
            out = self.compiled(x, *args, **kwargs)
            return out.clone() if isinstance(out, Tensor) else tuple(o.clone() for o in out)
        loss, keys, values = self.compiled(x, *args, **kwargs)
        if torch.is_grad_enabled() and loss.grad_fn is None:
            raise RuntimeError("the compiled step returned a loss without grad_fn (it would not train)")
        values = values.clone()  # its own memory: the next CUDA-graph replay reuses the graph's
        return loss.clone(), {k: values[i] for i, k in enumerate(keys)}

    def _give_up(self, why: str) -> None:
        warnings.warn(
            f"torch.compile of the {self.what} failed ({why}); continuing without compilation. "
            "Set compile=false to skip the attempt",
            RuntimeWarning,
            stacklevel=3,
        )
        self.compiled, self.fallbacks = None, self.fallbacks + 1


class FiniteWatch:
    """Remembers, on the device, the first step whose loss was not finite and the loss terms then.

    `update` adds a few tiny device ops and no synchronisation; `first_bad()` reads the result (one
    synchronisation), so the engine calls it every step on CPU, where it costs nothing, and once per
    epoch on CUDA. `members`: a pack's watch (gssl.packed), the loss and every term a [members] vector,
    each member watched on its own; first_bad(member) reads one."""

    def __init__(self, device: torch.device, members: int | None = None):
        self.device, self.shape = device, () if members is None else (members,)
        self.reset()

    def reset(self) -> None:
        self.step = torch.full(self.shape, -1, dtype=torch.long, device=self.device)
        self.terms: dict[str, Tensor] = {}

    def update(self, step: int, loss: Tensor, stats: dict[str, Tensor]) -> None:
        new = (self.step < 0) & ~torch.isfinite(loss.detach())
        self.step = torch.where(new, step, self.step)
        for k, v in stats.items():
            if not k.endswith("correct"):
                v = v.detach().float()
                v = v.mean() if not self.shape else v
                self.terms[k] = torch.where(new, v, self.terms.get(k, torch.zeros_like(v)))

    def first_bad(self, member: int | None = None) -> tuple[int, dict[str, float]] | None:
        def read(value):
            return value if member is None else value[member]

        step = int(read(self.step))
        if step < 0:
            return None
        return step, {k: float(read(v)) for k, v in self.terms.items()}
