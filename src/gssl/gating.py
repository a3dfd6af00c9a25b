"""Gates: how the per-task pretext losses are weighted (SPEC section 3).

Every gate maps (pooled feature [B, D], per-sample pretext losses [B, T]) to a GateOutput:
  pretext_loss  scalar, what the backbone and pretext heads minimise (times ssl_ratio);
  aux_loss      scalar, already scaled, the gate's own objective (0 when it has none);
  weights       [T], detached batch-mean gate weights, for logging.
The training loss is  L_cls + ssl_ratio * pretext_loss + aux_loss.

Modes: `reference` (the authors' code), `learned` (a gate that learns, with a defence against
collapse), `uniform` (every weight 1, the code's "Nomoe"). `none` means no pretext tasks at all:
there is nothing to gate, so the caller builds no Pretext and no gate.

The established ways to weigh auxiliary losses, side by side with them (docs/gates.md): `uncertainty`
(Kendall et al. 2018), `gradnorm` (Chen et al. 2018), `gcs` (Du et al. 2018), `dwa` (Liu et al. 2019).
In all of them the classification (or contrastive) loss keeps weight 1 and ssl_ratio still scales the
pretext term, so they differ from the gates above only in how the pretext tasks are weighed. Two
optional parts of the protocol serve them:
  combine(main_loss, losses, head_losses, shared)  a gate with `needs_main_loss` (gcs) weighs the
      tasks against the main task: GatedPretext calls it, through PretextTerm.added_to, where the
      main loss is known (instead of forward);
  start_epoch(epoch), after_step()  per-epoch and per-step state (dwa, gradnorm), called by the
      scenario through GatedPretext; a step's losses are counted once, whatever number of forward
      passes it made (an adversarial attack calls the loss too).
"""

import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .distributed import mean_over_ranks, sum_over_ranks


class Gate(nn.Module):
    """What the code around a gate asks of it, as attributes of its class (never a comparison of names):
    how it is combined (`needs_main_loss`), whether DDP sees its parameters unused (`trains`), what a
    non-discriminating weight is (`on_simplex`), whether a pack (vmap, gssl.packed) can run it
    (`packable`), and which ssl settings it reads (`settings`: ssl key -> its constructor's keyword)."""

    needs_main_loss: ClassVar[bool] = False  # weighs the tasks against the main loss: combine(), not forward
    trains: ClassVar[bool] = True  # False: its parameters never get a gradient
    on_simplex: ClassVar[bool] = False  # its weights sum to 1 (softmax), so a task's uniform weight is 1/T
    packable: ClassVar[bool] = True  # no state across steps and no gradient inside the step
    settings: ClassVar[dict[str, str]] = {}


class GateOutput(NamedTuple):
    pretext_loss: Tensor
    aux_loss: Tensor
    weights: Tensor


def gate_entropy(weights: Tensor) -> Tensor:
    """Entropy (nats) of gate weights along the last dim; for logging and tests."""
    return -(weights * torch.log(weights.clamp_min(1e-12))).sum(-1)


class ReferenceGate(Gate):
    """The authors' gate: G = softmax(mean_b(W^T f_b + b)), one weight per task for the batch.

    The code turns G into Python floats (`.item()`) before weighting the losses, so the gate is
    cut from the graph: it NEVER LEARNS. Its parameters stay at their (Kaiming-normal, as the
    reference's init) random values and receive no gradient; the weighting drifts only because
    the features it reads change. We reproduce that with `detach()` instead of `.item()` (same
    values, no host sync). With that init and post-ReLU features the random weighting is usually
    far from uniform: for a fresh ResNet-32 and the three tasks, one task gets 0.79-0.93 of the weight
    (5 seeds), which one depending on the seed."""

    trains, on_simplex = False, True

    def __init__(self, feat_dim: int, n_tasks: int, **_):
        super().__init__()
        self.linear = nn.Linear(feat_dim, n_tasks)
        nn.init.kaiming_normal_(self.linear.weight)

    def forward(self, feat: Tensor, losses: Tensor) -> GateOutput:
        with torch.no_grad():
            g = F.softmax(self.linear(feat.detach()).float().mean(0), dim=0)
        return GateOutput((losses.mean(0) * g).sum(), losses.new_zeros(()), g)


class UniformGate(Gate):
    """Ungated baseline: every pretext loss has weight 1 (the code's "Nomoe")."""

    def __init__(self, feat_dim: int, n_tasks: int, **_):
        super().__init__()
        self.n_tasks = n_tasks

    def forward(self, feat: Tensor, losses: Tensor) -> GateOutput:
        ones = losses.new_ones(self.n_tasks)
        return GateOutput(losses.mean(0).sum(), losses.new_zeros(()), ones)


class LearnedGate(Gate):
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

    on_simplex = True
    settings = {"gate_tau": "tau"}

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


class UncertaintyGate(Gate):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018, "Multi-task learning using
    uncertainty to weigh losses for scene geometry and semantics").

    One learned log-variance s_n = log sigma_n^2 per pretext task; the pretext term is

        sum_n exp(-s_n) L_n + s_n        (L_n: task n's batch-mean loss)

    This is twice the paper's eq. 7 written in s = log sigma^2 (1/(2 sigma^2) L + log sigma, the form of
    the MTAN authors' code, lorenmt/mtan im2im_pred/utils.py: 1 / (2 exp(s)) L + s / 2); the factor 2
    moves neither the optimum, exp(s_n) = L_n, nor the weight at it, exp(-s_n) = 1 / L_n: a task whose
    loss stays high (noisy or random labels) is down-weighted, an easy one up-weighted without bound.
    The paper's classification form (eq. 10, 1/sigma^2 L + log sigma) would halve the regulariser
    (optimum weight 1 / (2 L_n)); we keep one form for every task, as that code does.

    The classification loss is NOT weighted: it is the main task and keeps weight 1 (no s of its own),
    so that the comparison with the other gates is about the pretext tasks only; ssl_ratio multiplies
    the whole term above (the optimum is the same, s moves ssl_ratio times slower). s starts at 0 (the
    uniform gate) and is stepped by the run's optimiser, weight decay included (negligible beside
    ssl_ratio x (1 - L_n exp(-s_n))). Logged weights: exp(-s_n). Compiles as one graph; under DDP,
    s's gradient is averaged like any parameter's, nothing else is reduced."""

    def __init__(self, feat_dim: int, n_tasks: int, **_):
        super().__init__()
        self.log_variance = nn.Parameter(torch.zeros(n_tasks))

    def forward(self, feat: Tensor, losses: Tensor) -> GateOutput:
        log_variance = self.log_variance.float()
        precision = torch.exp(-log_variance)
        pretext = (precision * losses.float().mean(0) + log_variance).sum()
        return GateOutput(pretext, pretext.new_zeros(()), precision.detach())


class GradNormGate(Gate):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018, "GradNorm: gradient normalization for
    adaptive loss balancing in deep multitask networks"), Algorithm 1 and eq. 1-2.

    Task weights w_n (a parameter, starting at 1) weigh the pretext losses: pretext = sum_n w_n L_n,
    with w held constant there (the network never changes w). With G_n = ||grad_W (w_n L_n)||, G-bar
    their mean, r_n = L~_n / mean_k L~_k the relative inverse training rate and L~_n = L_n(t) / L_n(0),
    the weights' own loss is the L1 gap (eq. 2)

        L_grad = sum_n | G_n - [G-bar r_n^alpha] |        (the bracket treated as a constant)

    whose gradient reaches w only; w is stepped by the run's optimiser with the network (one optimiser,
    as Algorithm 1) and, after each step (`after_step`), clamped at 0 and renormalised to sum to the
    number of tasks. L_n(0) is the first step's loss. alpha (the asymmetry) defaults to the paper's 1.5.

    W, the "last shared layer": the backbone's POOLED FEATURE f (the shared representation every head
    reads), not the last convolution's weights, so G_n = w_n ||d L_n / d f||. Why: it is defined for every
    backbone gssl has (ResNets, WRNs, the scattering network) without naming a layer; its gradient goes
    through the pretext heads only (no backward through the backbone: this gate costs N small head
    backward passes a step); and it is exact under DDP, since the global batch's feature gradient is
    every rank's rows: one all-reduce of 2N numbers (each rank's squared norms and losses) gives the
    one-process G_n and L_n, so every rank computes the same L_grad.

    The classification loss is not one of GradNorm's tasks: it keeps weight 1, so the comparison with
    the other gates is about the pretext tasks only (and ssl_ratio keeps its meaning). The gradients are
    taken with torch.autograd.grad inside the step, which torch.compile traces into the step's graph
    (gssl.step.Compiled turns dynamo's trace_autograd_ops on)."""

    packable = False
    settings = {"gradnorm_alpha": "alpha"}

    def __init__(self, feat_dim: int, n_tasks: int, *, alpha: float = 1.5, **_):
        super().__init__()
        if alpha < 0:
            raise ValueError(f"gradnorm alpha must be >= 0, got {alpha}")
        self.task_weight = nn.Parameter(torch.ones(n_tasks))
        self.register_buffer("initial_losses", torch.ones(n_tasks))  # L_n(0), set after the first step
        self.register_buffer("has_initial", torch.zeros(()))
        self.register_buffer("last_losses", torch.zeros(n_tasks))  # this step's (global) L_n
        self.alpha, self.n_tasks = alpha, n_tasks

    def forward(self, feat: Tensor, losses: Tensor) -> GateOutput:
        task_losses = losses.float().mean(0)
        grad_norms, global_losses = self.feature_gradient_norms(feat, task_losses)
        weight = self.task_weight.float()
        weighted_norms = weight * grad_norms  # G_n, differentiable in w only
        initial = torch.where(self.has_initial > 0, self.initial_losses, global_losses)
        loss_ratio = global_losses / initial.clamp_min(1e-12)
        inverse_rate = loss_ratio / loss_ratio.mean()
        target = (weighted_norms.mean() * inverse_rate**self.alpha).detach()
        gap = (weighted_norms - target).abs().sum()
        self.last_losses.copy_(global_losses)
        return GateOutput((weight.detach() * task_losses).sum(), gap, weight.detach())

    def feature_gradient_norms(self, feat: Tensor, task_losses: Tensor) -> tuple[Tensor, Tensor]:
        """(||d L_n / d f|| for the global batch, the global batch's L_n), both detached."""
        if torch.is_grad_enabled() and feat.requires_grad:
            squared = torch.stack(
                [
                    # allow_unused: an extra loss (SelfPatch's) need not reach the feature: its norm is 0
                    torch.autograd.grad(
                        task_losses[n], feat, retain_graph=True, allow_unused=True, materialize_grads=True
                    )[0]
                    .float()
                    .square()
                    .sum()
                    for n in range(self.n_tasks)
                ]
            )
        else:  # no graph (a loss evaluated under no_grad): nothing to balance
            squared = task_losses.new_zeros(self.n_tasks)
        summed, world = sum_over_ranks(torch.cat([squared, task_losses.detach()]))
        # the global loss is the mean of the ranks' losses, so its feature gradient is each rank's / world
        return (summed[: self.n_tasks] / world**2).sqrt(), summed[self.n_tasks :] / world

    @torch.no_grad()
    def after_step(self) -> None:
        self.initial_losses.copy_(torch.where(self.has_initial > 0, self.initial_losses, self.last_losses))
        self.has_initial.fill_(1.0)
        weight = self.task_weight.clamp_(min=0)
        total = weight.sum()
        weight.copy_(torch.where(total > 0, weight * self.n_tasks / total.clamp_min(1e-12), 1.0))


class GradientSimilarityGate(Gate):
    """Gradient similarity (Du, Czarnecki, Jayakumar, Farajtabar, Pascanu & Lakshminarayanan, 2018,
    "Adapting auxiliary losses using gradient similarity", arXiv:1812.02224): an auxiliary task's gradient
    reaches the SHARED parameters theta only as far as it agrees with the main task's there, with
    cos_n = cos(grad_theta L_main, grad_theta L_n):

        unweighted (Algorithm 1, `weighted=False`):  theta gets grad L_main + sum_n 1[cos_n > 0] grad L_n
        weighted (Algorithm 2, `weighted=True`):     theta gets grad L_main + sum_n max(0, cos_n) grad L_n

    while each task's own head always gets its full gradient (the paper updates the task-specific
    parameters with their own loss unconditionally). Written as one loss for the engine's backward:
        pretext = sum_n w_n L_n(f) + (1 - w_n) L_n(f.detach())
    (the same value as sum_n L_n; the heads see the full gradient, the backbone w_n of it).

    Shared parameters: every parameter upstream of the feature the heads read (the backbone, and batch
    fusion in contrastive runs), as the network carrying the GatedPretext passes them. The main loss is
    the classification loss (FixMatch: labelled + lambda_u x unlabelled; SimCLR: NT-Xent), which is why
    this gate combines where the main loss is known (`combine`) and not in `forward`.

    Cost: N + 1 extra backward passes through the backbone per step (torch.autograd.grad of the main
    loss and of each task loss on the shared parameters; docs/gates.md measures it). torch.compile traces
    them into the step's graph (gssl.step.Compiled turns dynamo's trace_autograd_ops on). Under DDP the
    N + 1 flattened gradients are averaged over ranks before the cosines (one all-reduce of (N + 1) x
    |theta| numbers), so every rank gates with the one-process cosines. Under fp16 autocast the gradients
    are taken unscaled (no GradScaler): small ones may underflow to a cosine of 0 (the task off)."""

    needs_main_loss, packable = True, False
    settings = {"gcs_weighted": "weighted"}

    def __init__(self, feat_dim: int, n_tasks: int, *, weighted: bool = False, **_):
        super().__init__()
        self.weighted, self.n_tasks = weighted, n_tasks

    def forward(self, feat: Tensor, losses: Tensor) -> GateOutput:
        raise RuntimeError("the gcs gate weighs the tasks against the main loss: call combine() with it")

    def combine(
        self, main_loss: Tensor, losses: Tensor, head_losses: Tensor, shared: Sequence[Tensor]
    ) -> tuple[GateOutput, Tensor]:
        """(the gated output, the cosines) from the main loss, the tasks' batch-mean losses [T] through
        the feature, the same losses through the detached feature, and the shared parameters."""
        cosines = self.cosines(main_loss, losses, shared)
        weights = cosines.clamp_min(0) if self.weighted else (cosines > 0).float()
        pretext = (weights * losses + (1 - weights) * head_losses).sum()
        return GateOutput(pretext, pretext.new_zeros(()), weights), cosines

    def cosines(self, main_loss: Tensor, losses: Tensor, shared: Sequence[Tensor]) -> Tensor:
        if not (torch.is_grad_enabled() and main_loss.requires_grad and shared):
            return losses.new_ones(self.n_tasks)  # no graph to compare (no_grad): every task kept
        grads = [flat_gradient(main_loss, shared)]
        grads += [flat_gradient(losses[n], shared) for n in range(self.n_tasks)]
        grads = mean_over_ranks(torch.stack(grads))
        return F.cosine_similarity(grads[:1], grads[1:], dim=1)


def flat_gradient(loss: Tensor, params: Sequence[Tensor]) -> Tensor:
    """d loss / d params as one float32 vector (zeros for a parameter the loss does not reach)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).float().reshape(-1) for g, p in zip(grads, params)]
    )


class DynamicWeightAverageGate(Gate):
    """Dynamic weight average (Liu, Johns & Davison, CVPR 2019, "End-to-end multi-task learning with
    attention", eq. 7; the authors' code: lorenmt/mtan im2im_pred/utils.py, multi_task_trainer):

        w_n(t) = N exp(r_n(t-1) / T) / sum_k exp(r_k(t-1) / T),   r_n(t-1) = L_n(t-1) / L_n(t-2)

    with L_n(t) task n's mean training loss over epoch t (the mean over the epoch's steps, as that code
    averages per batch) and w_n = 1 in the first two epochs; T (the temperature) defaults to the paper's
    2. A task whose loss falls more slowly gets more weight. The weights are constant within an epoch.

    State: this step's losses are written in `forward` (a buffer), added to the epoch's sums once per
    step by `after_step` and rolled into the last two epoch means by `start_epoch`, all buffers, so a
    checkpoint carries them and a resumed run weighs its next epoch as an uninterrupted one. Under DDP
    `after_step` averages the step's losses over ranks (one all-reduce of N numbers), so the epoch means
    are the global batch's and every rank has the same weights. Compiles as one graph. The
    classification loss keeps weight 1, as in the other gates of this family."""

    packable = False
    settings = {"dwa_temperature": "temperature"}

    def __init__(self, feat_dim: int, n_tasks: int, *, temperature: float = 2.0, **_):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"dwa temperature must be > 0, got {temperature}")
        self.temperature, self.n_tasks = temperature, n_tasks
        self.register_buffer("task_weight", torch.ones(n_tasks))
        self.register_buffer("last_losses", torch.zeros(n_tasks))
        self.register_buffer("epoch_loss_sum", torch.zeros(n_tasks))
        self.register_buffer("epoch_steps", torch.zeros(()))
        self.register_buffer("epoch_means", torch.ones(2, n_tasks))  # rows: L(t-2), L(t-1)
        self.register_buffer("epochs_seen", torch.zeros(()))

    def forward(self, feat: Tensor, losses: Tensor) -> GateOutput:
        task_losses = losses.float().mean(0)
        self.last_losses.copy_(task_losses.detach())
        weight = self.task_weight.clone()
        return GateOutput((weight * task_losses).sum(), task_losses.new_zeros(()), weight)

    @torch.no_grad()
    def after_step(self) -> None:
        self.epoch_loss_sum.add_(mean_over_ranks(self.last_losses))
        self.epoch_steps.add_(1)

    @torch.no_grad()
    def start_epoch(self, epoch: int) -> None:
        """Close the epoch that ran (if any: a repeated call, or the first epoch, finds no steps) and set
        the weights for the one that starts."""
        if self.epoch_steps.item() > 0:
            mean = self.epoch_loss_sum / self.epoch_steps
            self.epoch_means.copy_(torch.stack([self.epoch_means[1], mean]))
            self.epochs_seen.add_(1)
            self.epoch_loss_sum.zero_()
            self.epoch_steps.zero_()
        self.task_weight.copy_(self.weights_from_history())

    def weights_from_history(self) -> Tensor:
        if self.epochs_seen.item() < 2:
            return torch.ones_like(self.task_weight)
        rate = self.epoch_means[1] / self.epoch_means[0].clamp_min(1e-12)
        return self.n_tasks * F.softmax(rate / self.temperature, dim=0)


GATES: dict[str, type[Gate]] = {"reference": ReferenceGate, "learned": LearnedGate, "uniform": UniformGate}
# the established ways to weigh auxiliary losses (issue 21, docs/gates.md)
LOSS_WEIGHTINGS: dict[str, type[Gate]] = {
    "uncertainty": UncertaintyGate,
    "gradnorm": GradNormGate,
    "gcs": GradientSimilarityGate,
    "dwa": DynamicWeightAverageGate,
}
ALL_GATES: dict[str, type[Gate]] = {**GATES, **LOSS_WEIGHTINGS}
NO_GATE = "none"  # ssl.gate's value for "no pretext term": not a gate, so not in ALL_GATES


def build_gate(mode: str, feat_dim: int, n_tasks: int, **kw) -> Gate:
    """kw is passed on; LearnedGate uses num_classes (per task), tau, strength, per_sample; GradNormGate
    alpha; GradientSimilarityGate weighted; DynamicWeightAverageGate temperature."""
    if mode == NO_GATE:
        raise ValueError("gate 'none' means no pretext tasks: build no Pretext and no gate")
    if mode not in ALL_GATES:
        raise ValueError(f"unknown gate {mode!r}; valid: {', '.join(ALL_GATES)}, none")
    return ALL_GATES[mode](feat_dim, n_tasks, **kw)


def uniform_weight(mode: str, n_tasks: int) -> float:
    """The weight of every task when the gate does not discriminate: 1/n for the softmax gates, 1 for the
    others (uniform, and the loss weightings, which start there: gradnorm and dwa keep the sum at n)."""
    gate = ALL_GATES.get(mode)  # None: ssl.gate=none, a record without gate weights
    return 1 / n_tasks if gate is not None and gate.on_simplex else 1.0


def pretext_on(tasks, gate: str, extra=()) -> bool:
    """Whether a run has a gated pretext term: something to gate (tasks, or extra losses such as
    SelfPatch's) and a gate to weigh it (ssl.gate=none: there is none, and nothing is built)."""
    return bool(tasks or extra) and gate != NO_GATE


def gate_options(ssl) -> dict | None:
    """The chosen gate's own settings from the config's ssl section (None: the gate has none)."""
    settings = ALL_GATES[ssl.gate].settings if ssl.gate in ALL_GATES else {}
    return {keyword: getattr(ssl, key) for key, keyword in settings.items()} or None


def gate_setting_readers(key: str) -> list[str]:
    """The gates that read the ssl setting `key` (e.g. gate_tau: [learned]); [] for any other key."""
    return [name for name, gate in ALL_GATES.items() if key in gate.settings]
