"""Is the auxiliary task trained at all? Once per epoch, the gradient norm each term of the training loss
puts on the shared backbone, measured on a few batches of its own (docs/results.md, "The gradient
diagnostic").

A scenario that can split its loss (`Scenario.loss_terms`: the supervised scenario and its wrappers) gets,
in every row of metrics.jsonl:

    grad_cls              ||d L_cls / d theta||, theta the backbone's parameters
    grad_<task>           ||d (ssl_ratio x gate weight x L_task) / d theta||, the task as the total weighs it
    grad_pretext          the same for the sum of the weighted pretext terms
    grad_ratio_<task>     grad_cls / grad_<task> (null where the task's gradient is 0: ssl.ratio 0)
    grad_ratio_pretext    grad_cls / grad_pretext

each the mean over DIAGNOSTIC_BATCHES batches of one step's norm. A run without pretext tasks logs
grad_cls alone. The measurement changes no training number: its batches and pretext draws come from
streams of its own, the global RNG is forked, every buffer (batch norm's running statistics, a gate's
state) is put back as it was, and gradients are taken with torch.autograd.grad, so no parameter's .grad
and no optimiser state is touched. It runs eagerly in float32 (whatever the run's precision: bf16 would
round the small pretext gradients), outside the training steps, and reads the device once.
"""

from __future__ import annotations

import contextlib
import itertools

import torch
from torch import Tensor

from .data.loader import epoch_seed
from .gating import flat_gradient

DIAGNOSTIC_BATCHES = 2
SALT = 47 << 40  # the diagnostic's streams: the run seed's with these bits flipped (issue 47)


def diagnostic_seed(seed: int) -> int:
    """The base seed of the diagnostic's batches; its pretext draws use epoch_seed of it."""
    return seed ^ SALT


def gradient_norms(scenario, epoch: int, batches: int = DIAGNOSTIC_BATCHES) -> dict[str, float | None]:
    """The row's grad_* entries for this epoch ({} for a scenario that does not split its loss)."""
    if scenario.loss_terms is None:
        return {}
    ctx = scenario.ctx
    shared = [p for p in scenario.features(ctx.model).parameters() if p.requires_grad]
    loader = scenario.diagnostic_loader
    loader.set_epoch(epoch)
    generator = torch.Generator(device=ctx.device).manual_seed(
        epoch_seed(diagnostic_seed(ctx.cfg.seed), epoch)
    )
    sums: dict[str, Tensor] = {}
    with left_as_it_was(ctx.model, ctx.device):
        for step, (x, y) in enumerate(itertools.islice(loader, batches)):
            args = scenario.prepare(x, y, generator, epoch, step)
            for key, norm in term_norms(scenario.loss_terms(ctx.model, *args), shared).items():
                sums[key] = sums.get(key, 0) + norm
    if not sums:  # no batch on this rank
        return {}
    means = (torch.stack(list(sums.values())) / (step + 1)).tolist()  # one read of the device
    return ratios(dict(zip(sums, means)))


def term_norms(terms: dict[str, Tensor], shared: list[Tensor]) -> dict[str, Tensor]:
    """grad_<term> for every term (the first is the main loss) and grad_pretext for the sum of the others:
    the norms of their gradients on `shared`, on the device."""
    gradients = {name: flat_gradient(term, shared) for name, term in terms.items()}
    _, *pretext = gradients
    norms = {f"grad_{name}": torch.linalg.vector_norm(g) for name, g in gradients.items()}
    if pretext:
        norms["grad_pretext"] = torch.linalg.vector_norm(torch.stack([gradients[n] for n in pretext]).sum(0))
    return norms


def ratios(norms: dict[str, float]) -> dict[str, float | None]:
    """The norms, then the main term's over each other one (None where that one is 0)."""
    (_, main_norm), *others = norms.items()
    out: dict[str, float | None] = dict(norms)
    for key, norm in others:
        out[f"grad_ratio_{key[len('grad_') :]}"] = main_norm / norm if norm > 0 else None
    return out


@contextlib.contextmanager
def left_as_it_was(model: torch.nn.Module, device: torch.device):
    """Train mode for the measurement; afterwards every buffer, the mode and the global RNG as before."""
    saved = [buffer.clone() for buffer in model.buffers()]
    was_training = model.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.train()
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, old in zip(model.buffers(), saved):
                    buffer.copy_(old)
            model.train(was_training)
