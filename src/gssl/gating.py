"""Gates: how the per-task pretext losses are weighted (SPEC section 3).

Every gate maps (pooled feature [B, D], per-sample pretext losses [B, T]) to a GateOutput:
  pretext_loss  scalar, what the backbone and pretext heads minimise (times ssl_ratio);
  aux_loss      scalar, already scaled, the gate's own objective (0 when it has none);
  weights       [T], detached batch-mean gate weights, for logging.
The training loss is  L_cls + ssl_ratio * pretext_loss + aux_loss.

Modes: `reference` (the authors' code), `learned` (a gate that learns, with a defence against
collapse), `uniform` (every weight 1, the code's "Nomoe"). `none` means no pretext tasks at all:
there is nothing to gate, so the caller builds no Pretext and no gate.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class GateOutput(NamedTuple):
    pretext_loss: Tensor
    aux_loss: Tensor
    weights: Tensor


def gate_entropy(weights: Tensor) -> Tensor:
    """Entropy (nats) of gate weights along the last dim; for logging and tests."""
    return -(weights * torch.log(weights.clamp_min(1e-12))).sum(-1)


class ReferenceGate(nn.Module):
    """The authors' gate: G = softmax(mean_b(W^T f_b + b)), one weight per task for the batch.

    The code turns G into Python floats (`.item()`) before weighting the losses, so the gate is
    cut from the graph: it NEVER LEARNS. Its parameters stay at their (Kaiming-normal, as the
    reference's init) random values and receive no gradient; the weighting drifts only because
    the features it reads change. We reproduce that with `detach()` instead of `.item()` (same
    values, no host sync). With that init and post-ReLU features the random weighting is usually
    far from uniform: for a fresh ResNet-32 and the three tasks, one task gets 0.79-0.93 of the weight
    (5 seeds), which one depending on the seed."""

    def __init__(self, feat_dim: int, n_tasks: int, **_):
        super().__init__()
        self.linear = nn.Linear(feat_dim, n_tasks)
        nn.init.kaiming_normal_(self.linear.weight)

    def forward(self, feat: Tensor, losses: Tensor) -> GateOutput:
        with torch.no_grad():
            g = F.softmax(self.linear(feat.detach()).float().mean(0), dim=0)
        return GateOutput((losses.mean(0) * g).sum(), losses.new_zeros(()), g)


class UniformGate(nn.Module):
    """Ungated baseline: every pretext loss has weight 1 (the code's "Nomoe")."""

    def __init__(self, feat_dim: int, n_tasks: int, **_):
        super().__init__()
        self.n_tasks = n_tasks

    def forward(self, feat: Tensor, losses: Tensor) -> GateOutput:
        ones = losses.new_ones(self.n_tasks)
        return GateOutput(losses.mean(0).sum(), losses.new_zeros(()), ones)


class LearnedGate(nn.Module):
    """A gate that learns, without collapsing onto the easiest task.

    Why not just backpropagate sum_n G_n L_n into the gate? Its minimum over the simplex is the
    one-hot on the smallest loss: the gate collapses onto whichever task is easiest (SPEC 3).

    Design (per sample by default):
      * G_b = softmax(W^T f_b + c) on the DETACHED, unit-norm feature f_b: the backbone is not reshaped to
        please the gate; it only ever sees the gate weights as constants, exactly as in the
        reference, so `reference`/`learned` differ only in the weights.
      * The gate minimises  strength * mean_b [ sum_n G_bn * l_bn  -  tau * H(G_b) ]  with
        l_bn = L_bn / log(K_n), the task loss over its chance-level loss (a 16-way and a 2-way
        task compare fairly; l = 1 means "not learned at all"). This is `aux_loss`; only the gate
        receives its gradient (the losses are detached in it), so `strength` is nothing but the
        gate's own learning-rate multiplier. At 1 (not ssl_ratio, which made it ten times slower)
        the gate follows the task losses within an epoch at lr 0.1 instead of staying uniform.
      * Its minimiser is G_b = softmax(-l_b / tau) (Gibbs): tasks the network learns get more
        weight, tasks stuck at chance (channel permutation on greyscale images, SPEC 10) get
        less, and nothing ever goes one-hot. If the normalised losses of T tasks differ by at most
        D, every weight at the optimum is >= e^(-D/tau) times the largest, so the entropy is at
        least log(1 + (T - 1) e^(-D/tau)) (T = 3, D = 1, tau = 0.5: 0.24 nats; uniform is 1.10).
      * The backbone and heads minimise pretext_loss = mean_b sum_n G_bn.detach() * L_bn (raw
        losses, as the reference), so the loss scale is comparable across gate modes.
    Weights start at zero (uniform gate). `per_sample=False` gates the batch mean instead.
    An alternative defence, learning the gate against the classification loss (bilevel), needs a
    second backward per step; this one costs a [B, T] softmax.
    """

    def __init__(
        self,
        feat_dim: int,
        n_tasks: int,
        *,
        num_classes: Sequence[int] | None = None,
        tau: float = 0.5,
        strength: float = 1.0,
        per_sample: bool = True,
        **_,
    ):
        super().__init__()
        if tau <= 0:
            raise ValueError("tau must be > 0 (tau = 0 is the collapsing gate)")
        self.linear = nn.Linear(feat_dim, n_tasks)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        chance = [math.log(k) for k in num_classes] if num_classes is not None else [1.0] * n_tasks
        if len(chance) != n_tasks:
            raise ValueError("num_classes needs one entry per task")
        self.register_buffer("chance", torch.tensor(chance))
        self.tau, self.strength, self.per_sample = tau, strength, per_sample

    def gate_weights(self, feat: Tensor) -> Tensor:
        # Unit-norm input: pooled features can be large, and a linear gate on them overshoots under
        # SGD at lr 0.1 into a saturated softmax that no longer gets gradient (seen: 1.000/0/0).
        logits = self.linear(F.normalize(feat.detach().float(), dim=1)).float()
        if not self.per_sample:
            logits = logits.mean(0, keepdim=True)
        return F.softmax(logits, dim=1)  # [B, T] or [1, T]

    def forward(self, feat: Tensor, losses: Tensor) -> GateOutput:
        g = self.gate_weights(feat)
        losses = losses.float()
        if not self.per_sample:
            losses = losses.mean(0, keepdim=True)
        norm = losses.detach() / self.chance
        aux = self.strength * ((g * norm).sum(1) - self.tau * gate_entropy(g)).mean()
        pretext = (g.detach() * losses).sum(1).mean()
        return GateOutput(pretext, aux, g.detach().mean(0))


GATES: dict[str, type] = {"reference": ReferenceGate, "learned": LearnedGate, "uniform": UniformGate}


def build_gate(mode: str, feat_dim: int, n_tasks: int, **kw) -> nn.Module:
    """kw is passed on; LearnedGate uses num_classes (per task), tau, strength, per_sample."""
    if mode == "none":
        raise ValueError("gate 'none' means no pretext tasks: build no Pretext and no gate")
    if mode not in GATES:
        raise ValueError(f"unknown gate {mode!r}; valid: {', '.join(GATES)}, none")
    return GATES[mode](feat_dim, n_tasks, **kw)
