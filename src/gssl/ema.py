"""The exponential moving average of a model's weights: FixMatch's evaluated weights, DINO's teacher, a
Mean Teacher's teacher."""

from __future__ import annotations

import copy

import torch
from torch import Tensor


class EMA(torch.nn.Module):
    """Exponential moving average of the weights and float buffers, kept on the model's device:
    ema = decay * ema + (1 - decay) * current after each step, from a copy of the initial model (as
    FixMatch's own EMA). One foreach lerp per step, no host synchronisation; integer buffers (batch
    norm's step count) are copied. `module` is the averaged model; state_dict keys are "module.*"."""

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        mine, theirs = self._floats(self.module), self._floats(model)
        torch._foreach_lerp_(mine, theirs, 1.0 - self.decay)
        for a, b in zip(self.module.buffers(), model.buffers()):
            if not a.is_floating_point():
                a.copy_(b)

    @staticmethod
    def _floats(model: torch.nn.Module) -> list[Tensor]:
        return [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False):
        state = {k: v for k, v in state.items() if k != "n_averaged"}  # runs saved with AveragedModel
        return super().load_state_dict(state, strict=strict, assign=assign)
