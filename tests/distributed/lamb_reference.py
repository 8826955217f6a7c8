"""LAMB written here from the paper (You et al. 2020, Alg. 2, in optax's formulation), independent of optimlab:
a plain `torch.optim.Optimizer` whose arithmetic is float64, for the FSDP2 scenario (scenarios.py) to train
the whole tensors with under DDP and compare optimlab's LAMB on shards against.

    m ← β1 m + (1 − β1) g      v ← β2 v + (1 − β2) g²      u = m̂ / (√v̂ + ε) + λθ
    trust = ‖θ‖ / ‖u‖ (1 where either norm is 0)      θ ← θ − η · trust · u

The same algorithm as `reference` in tests/torch/test_lamb.py (lists of Python floats), here on tensors so
that it can step a model inside a training loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class PaperLAMB(torch.optim.Optimizer):
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["t"] = 0
                    state["m"] = torch.zeros_like(param, dtype=torch.float64)
                    state["v"] = torch.zeros_like(param, dtype=torch.float64)
                state["t"] += 1
                t, m, v = state["t"], state["m"], state["v"]
                theta, grad = param.detach().double(), param.grad.double()
                m.mul_(beta1).add_((1 - beta1) * grad)
                v.mul_(beta2).add_((1 - beta2) * grad * grad)
                u = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + group["eps"]) \
                    + group["weight_decay"] * theta
                param_norm = math.sqrt(float((theta * theta).sum()))
                update_norm = math.sqrt(float((u * u).sum()))
                trust = param_norm / update_norm if param_norm > 0 and update_norm > 0 else 1.0
                param.copy_(theta - group["lr"] * trust * u)
