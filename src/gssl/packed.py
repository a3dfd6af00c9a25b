"""K runs of one configuration, differing only in seed, trained as one stacked model ("a pack").

Why: a ResNet-32 step at batch 128 is a few hundred tiny kernels that leave a large GPU mostly idle.
Stacking K members' parameters and running each step once for all of them makes every kernel K times
larger, and the K runs cost little more than one.

How: every member's network is built exactly as its single run builds it (same seed, same draws), then
`torch.func.stack_module_state` stacks the parameters and buffers along a new first dimension of K. A
step is `vmap` over the members of `functional_call` of the scenario's own pure loss: each member
computes its single run's function on its own batch and pretext draws. Under vmap a convolution whose
input and weight are both batched runs as one grouped convolution, and batch norm updates each member's
own running statistics (stacked buffers). The step returns the sum of the members' losses (the members
share no parameter, so each member's gradient is its own loss's) and every statistic as a [K] vector.
benchmarks/bench_pack.py measures this against hand-written channel-stacked grouped convolutions.

The member networks stay the runs' own modules: `write_back` copies the stacked values into them for
evaluation and checkpoints, `read_in` copies them back after a resume, so evaluation, checkpoints and
every file of a run directory are the single run's (gssl.packrun).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap
from torch.utils import _pytree as pytree

from .distributed import StepModule


class Pack:
    """The stacked parameters and buffers of K member networks, and the step over all of them."""

    def __init__(self, models: list[nn.Module], loss_fn):
        if len(models) < 1:
            raise ValueError("a pack needs at least one member network")
        self.models = models
        steps = [StepModule(model, loss_fn) for model in models]
        params, buffers = stack_module_state(steps)
        self.params = {name: value.contiguous().detach().requires_grad_() for name, value in params.items()}
        self.buffers = {name: value.contiguous() for name, value in buffers.items()}
        self.template = copy.deepcopy(steps[0]).to("meta")  # the structure; the values come from the stacks
        self.eval_network = copy.deepcopy(models[0]).to("meta").eval()

    @property
    def size(self) -> int:
        return len(self.models)

    def loss(self, x: torch.Tensor, *args):
        """(sum of the members' losses, {statistic: [K] values}) for stacked inputs: x [K, B, ...] and the
        rest of the scenario's loss arguments as `stack_args` made them. The pure part: it compiles."""
        *rest, in_dims = args  # in_dims: x's, then the rest's
        member = vmap(self._member_loss, in_dims=(0, 0, *in_dims), randomness="error")
        losses, stats = member(self.params, self.buffers, x, *rest)
        return losses.sum(), stats

    def _member_loss(self, params, buffers, x, *args):
        return functional_call(self.template, (params, buffers), (x, *args), strict=True)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's evaluation output for one shared batch x [B, ...]: [K, B, classes], the networks in
        eval mode (running statistics), no gradient. The pure part of evaluation: it compiles."""
        params = {name[len("model.") :]: value for name, value in self.params.items()}
        buffers = {name[len("model.") :]: value for name, value in self.buffers.items()}
        with torch.no_grad():
            return vmap(lambda p, b: functional_call(self.eval_network, (p, b), (x,)))(params, buffers)

    def write_back(self) -> None:
        """Copy every member's slice of the stacks into its own network (before evaluating or saving)."""
        with torch.no_grad():
            for index, model in enumerate(self.models):
                for name, tensor in _member_state(model).items():
                    tensor.copy_(self._stacked(name)[index])

    def read_in(self) -> None:
        """Copy every member network's values into the stacks (after loading members' checkpoints)."""
        with torch.no_grad():
            for index, model in enumerate(self.models):
                for name, tensor in _member_state(model).items():
                    self._stacked(name)[index].copy_(tensor)

    def _stacked(self, name: str) -> torch.Tensor:
        key = "model." + name
        return self.params[key] if key in self.params else self.buffers[key]


def _member_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def stack_args(member_args: list[tuple]) -> tuple:
    """The members' loss arguments (what each member's scenario.prepare returned) as one call: tensors
    stacked along a new first dimension (vmapped), anything else (the loss module) shared by every member,
    which must then hold the very same object. Returns (*stacked arguments, in_dims for vmap)."""
    flat, spec = zip(*(pytree.tree_flatten(args) for args in member_args))
    if any(s != spec[0] for s in spec):
        raise ValueError("the members' step arguments differ in structure; they cannot share a pack")
    leaves, dims = [], []
    for values in zip(*flat):
        if isinstance(values[0], torch.Tensor):
            leaves.append(torch.stack(values))
            dims.append(0)
        elif all(value is values[0] for value in values):
            leaves.append(values[0])
            dims.append(None)
        else:
            raise ValueError(f"the members' step arguments hold different {type(values[0]).__name__} objects")
    stacked = pytree.tree_unflatten(leaves, spec[0])
    in_dims = pytree.tree_unflatten(dims, spec[0])
    return (*stacked, tuple(in_dims))


def member_stats(stats: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """One member's statistics out of the pack's [K] vectors."""
    return {key: value[index] for key, value in stats.items()}


def split_optimizer_state(stacked: torch.optim.Optimizer, member_optimizers: list) -> None:
    """Each member's slice of the pack optimiser's state (momentum buffers) and its groups' settings, put
    into that member's own optimiser over its own network: its checkpoint's `optimizer` is then exactly a
    single run's. Both optimisers list their parameters in the same order (build_optimizer's `stacked`)."""
    for index, member in enumerate(member_optimizers):
        for group, own in zip(stacked.param_groups, member.param_groups, strict=True):
            own.update({key: value for key, value in group.items() if key != "params"})
            for param, own_param in zip(group["params"], own["params"], strict=True):
                state = stacked.state.get(param)
                if state:
                    member.state[own_param] = {
                        key: _member_slice(value, param, index) for key, value in state.items()
                    }
                else:
                    member.state.pop(own_param, None)


def _member_slice(value, param: torch.Tensor, index: int):
    if not isinstance(value, torch.Tensor):
        return value
    return value[index].clone() if value.shape == param.shape else value.clone()  # a shared step count


def stack_optimizer_states(stacked: torch.optim.Optimizer, member_optimizers: list) -> None:
    """The reverse of split_optimizer_state, after each member's checkpoint has loaded into its own
    optimiser (a resume): the members' buffers stacked into the pack optimiser's state."""
    for group_index, group in enumerate(stacked.param_groups):
        for param_index, param in enumerate(group["params"]):
            owns = [m.param_groups[group_index]["params"][param_index] for m in member_optimizers]
            states = [m.state.get(own) for m, own in zip(member_optimizers, owns)]
            if not any(states):
                stacked.state.pop(param, None)
                continue
            if not all(states):
                raise ValueError("some members' checkpoints have optimiser state where others have none")
            stacked.state[param] = {
                key: torch.stack([s[key] for s in states]).contiguous()
                if isinstance(value, torch.Tensor) and value.shape == owns[0].shape
                else value
                for key, value in states[0].items()
            }


class PackedEvaluation:
    """Each member's evaluation function for metrics.predict, all members computed in one forward per
    test batch: the first member to ask for batch i computes every member's logits of it, the others
    read theirs. The members' test loaders are the same ordered split, so batch i is the same images for
    all of them. `start()` before each evaluation round."""

    def __init__(self, logits_fn, members: int):
        self.logits_fn, self.members = logits_fn, members
        self.start()

    def start(self) -> None:
        self.batches: list[torch.Tensor] = []
        self.calls = [0] * self.members

    def member(self, index: int):
        def logits(x: torch.Tensor) -> torch.Tensor:
            position = self.calls[index]
            self.calls[index] += 1
            if position == len(self.batches):
                self.batches.append(self.logits_fn(x))
            return self.batches[position][index]

        return logits
