"""Data-parallel training under torchrun, with PyTorch's own DistributedDataParallel.

`torchrun --nproc_per_node N -m gssl train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; `setup()` then
joins the process group (NCCL on CUDA, gloo on CPU) and every rank trains on its slice of each global
batch (DeviceLoader's rank/world). Only rank 0 writes the run directory. Without those variables
everything here is a no-op and a run is an ordinary single process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # we created the process group (and tear it down)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_name: str, timeout_s: int = 600) -> tuple[Dist, str]:
    """(Dist, device name for this rank). Joins the process group if torchrun started us."""
    if dist.is_available() and dist.is_initialized():
        ranks = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    elif int(os.environ.get("WORLD_SIZE", 1)) > 1:
        cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
        local = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
        ranks = Dist(dist.get_rank(), dist.get_world_size(), local, owned=True)
    else:
        return Dist(), device_name
    if device_name == "cpu" or (device_name == "auto" and not torch.cuda.is_available()):
        return ranks, "cpu"
    return ranks, f"cuda:{ranks.local_rank}"


def teardown(ranks: Dist) -> None:
    if ranks.owned and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ranks: Dist) -> None:
    if ranks.enabled:
        dist.barrier()


def all_sum(ranks: Dist, values: dict[str, torch.Tensor], seen: int) -> tuple[dict[str, torch.Tensor], int]:
    """Sum the epoch's metric sums and sample count over ranks (one collective)."""
    if not ranks.enabled:
        return values, seen
    keys = list(values)  # the same order on every rank: the same code filled it
    device = values[keys[0]].device if keys else torch.device("cpu")
    flat = torch.stack(
        [values[k].detach().float().reshape(()) for k in keys] + [torch.tensor(float(seen), device=device)]
    )
    dist.all_reduce(flat)
    return {k: flat[i] for i, k in enumerate(keys)}, int(flat[-1].item())


def sum_over_ranks(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(tensor summed over every rank, the number of ranks) inside a training step: a functional
    all-reduce, which torch.compile traces into the step's graph. Without torchrun, (tensor, 1). For the
    statistics a gate must see for the global batch (GradNorm's gradient norms, GCS's gradients); detached
    values."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor, 1
    world = dist.get_world_size()
    if world == 1:
        return tensor, 1
    from torch.distributed import _functional_collectives as funcol

    return funcol.all_reduce(tensor, "sum", dist.group.WORLD), world


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """tensor averaged over every rank (sum_over_ranks / world); tensor itself without torchrun."""
    total, world = sum_over_ranks(tensor)
    return total if world == 1 else total / world


def check_same(ranks: Dist, what: str, values: list[float], device) -> None:
    """Refuse to train if ranks disagree (e.g. class counts, hence LDAM margins and DRW weights)."""
    if not ranks.enabled:
        return
    t = torch.tensor(values, dtype=torch.float64, device=device)
    lo, hi = t.clone(), t.clone()
    dist.all_reduce(lo, dist.ReduceOp.MIN)
    dist.all_reduce(hi, dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise RuntimeError(
            f"ranks disagree on {what}; every rank must read the same dataset and configuration"
        )


class StepModule(nn.Module):
    """The training step as a module, so DDP's forward hooks see it and average the gradients:
    forward(*args) is `loss_fn(model, *args)`, the scenario's pure loss."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, *args):
        return self.loss_fn(self.model, *args)


def convert_sync_bn(ranks: Dist, model: nn.Module, sync_bn: bool, device: torch.device) -> nn.Module:
    """The model with SyncBatchNorm under torchrun when asked (CUDA only), else as it is."""
    if not (ranks.enabled and sync_bn):
        return model
    if device.type != "cuda":
        from .config import ConfigError

        raise ConfigError(
            "distributed.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm is GPU-only); on CPU "
            "each rank normalises with its own batch's statistics; set distributed.sync_bn=false"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def step_module(ranks: Dist, model: nn.Module, loss_fn, device: torch.device) -> nn.Module:
    """StepModule(model, loss_fn), under torchrun inside DistributedDataParallel; the reference gate's
    parameters get no gradient (its output is detached), hence find_unused_parameters for that gate alone."""
    step = StepModule(model, loss_fn)
    if not ranks.enabled:
        return step
    return nn.parallel.DistributedDataParallel(
        step,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=_frozen_gate(model),
    )


def _frozen_gate(model: nn.Module) -> bool:
    pretext = getattr(model, "pretext", None)
    return pretext is not None and not pretext.gate.trains


def global_params(ranks: Dist, model, x: torch.Tensor, gen: torch.Generator, size: int, start: int) -> dict:
    """Pretext parameters drawn for the whole global batch of `size` (as one process would draw them),
    then this rank's rows [start, start + len(x))."""
    if not ranks.enabled:
        return model.sample_params(x, gen)
    full = model.sample_params(x[:1].expand(size, *x.shape[1:]), gen)
    b = x.shape[0]
    return {k: v[start : start + b] if v.dim() and v.shape[0] == size else v for k, v in full.items()}
