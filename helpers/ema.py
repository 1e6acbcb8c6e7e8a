"""Exponential moving average of a model's weights (Polyak averaging; DDPM used decay 0.9999).

    shadow <- decay_n * shadow + (1 - decay_n) * param,   after every ``update_every``-th step,

with warm-up decay_n = min(decay, (1 + n) / (10 + n)) at the n-th update (the rule of
TensorFlow's ExponentialMovingAverage with ``num_updates``): early on the average follows the
weights closely, so that EMA samples are not stuck near the random initialisation.

Only the network's own parameters and buffers are averaged: schedule tables live in
``Diffusion``, never inside the module, so they are never blurred by the average.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Shadow weights of ``model``: ``update`` after optimiser steps, ``copy_to``/``store``/``restore``
    to sample with them and switch back, ``state_dict``/``load_state_dict`` for checkpoints."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True, update_every: int = 1) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        self.decay, self.warmup, self.update_every = decay, warmup, update_every
        self.step = 0  # optimiser steps seen
        self.num_updates = 0  # averages taken
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if v.dtype.is_floating_point}
        self._stored: dict[str, torch.Tensor] | None = None

    def current_decay(self) -> float:
        """decay_n = min(decay, (1 + n) / (10 + n)) with warm-up, else ``decay``; n = updates so far."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Count one optimiser step; every ``update_every`` steps, move the shadow towards ``model``."""
        self.step += 1
        if self.step % self.update_every:
            return
        decay = self.current_decay()
        state = model.state_dict()
        names = list(self.shadow)
        # shadow + (1 - decay) (param - shadow), for all tensors in one fused call
        torch._foreach_lerp_([self.shadow[n] for n in names], [state[n].detach().float() for n in names], 1 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (its other state untouched)."""
        state = model.state_dict()
        for name, shadow in self.shadow.items():
            state[name].copy_(shadow)

    def store(self, model: nn.Module) -> None:
        """Keep a copy of ``model``'s current weights, to ``restore`` after sampling with the EMA."""
        state = model.state_dict()
        self._stored = {name: state[name].detach().clone() for name in self.shadow}

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Put back the weights saved by ``store``."""
        if self._stored is None:
            raise RuntimeError("EMA.restore() called without a preceding store()")
        state = model.state_dict()
        for name, value in self._stored.items():
            state[name].copy_(value)
        self._stored = None

    def averaged(self, model: nn.Module) -> _Averaged:
        """Context manager: ``with ema.averaged(model): sample(model, ...)`` uses the EMA weights."""
        return _Averaged(self, model)

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "update_every": self.update_every,
            "step": self.step,
            "num_updates": self.num_updates,
            "shadow": {k: v.clone() for k, v in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("the EMA state does not match this model's parameters (a checkpoint of another model?)")
        self.decay, self.warmup, self.update_every = state["decay"], state["warmup"], state["update_every"]
        self.step, self.num_updates = state["step"], state["num_updates"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)


class _Averaged:
    def __init__(self, ema: EMA, model: nn.Module) -> None:
        self.ema, self.model = ema, model

    def __enter__(self) -> nn.Module:
        self.ema.store(self.model)
        self.ema.copy_to(self.model)
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.ema.restore(self.model)
