"""PyTorch optimizers that are drop-in replacements for `torch.optim`, step for step.

    import optimlab.torch as otorch
    optimizer = otorch.AdamW(model.parameters(), lr=3e-4)            # was: torch.optim.AdamW(...)
    optimizer = otorch.create("adamw", model.parameters(), lr=3e-4)  # the same, by name

Each class takes PyTorch's arguments with PyTorch's defaults (plus `eps_root` where the rule has it) and
keeps PyTorch's state keys, so state dicts load both ways between `torch.optim` and optimlab. The math is the
rule in `optimlab.rules`; where it runs is the backend: `backend="auto"` (the first registered backend that
can: numba's fused CPU kernels, triton on CUDA, else eager PyTorch), or a name from `optimlab.backends`.
Opt-ins beyond PyTorch: `state_dtype` (e.g. `torch.bfloat16` state) and `skip_nonfinite=True` (a step whose
gradients are not all finite changes nothing and is counted in `optimizer.skipped_steps`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .._extras import requires_extra
from ..rules import REGISTRY, RULES, Rule, adafactor, lookup, muon

with requires_extra("optimlab.torch"):
    import torch
    from torch.optim.optimizer import _to_scalar

    from .optimizer import Optimizer, load_optional_backends

Params = Iterable[Any]


def _hyperparameters(group: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The group's values of `names`, one-element tensors made 0-dim as `torch.optim` does (`lr=tensor([1e-3])`)."""
    def scalar(value: Any) -> Any:
        return tuple(map(_to_scalar, value)) if isinstance(value, (tuple, list)) else _to_scalar(value)
    return {name: scalar(group[name]) for name in names}


def _optimlab_keys(backend: str, state_dtype: torch.dtype | None, skip_nonfinite: bool) -> dict[str, Any]:
    return {"backend": backend, "state_dtype": state_dtype, "skip_nonfinite": skip_nonfinite}


class SGD(Optimizer):
    """`torch.optim.SGD`: θ ← θ − η g, or with `momentum` > 0 the heavy ball b ← γ b + (1 − dampening) g,
    θ ← θ − η b (Nesterov: θ ← θ − η (g + γ b)). Runs the `sgd` rule when momentum is 0, else `momentum`."""

    torch_name = "SGD"
    counts_steps = False
    setstate_defaults = {"nesterov": False, "maximize": False, "foreach": None, "differentiable": False,
                         "fused": False}

    def __init__(self, params: Params, lr: float | torch.Tensor = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float = 0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None, backend: str = "auto", state_dtype: torch.dtype | None = None,
                 skip_nonfinite: bool = False) -> None:
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                    "nesterov": nesterov, "maximize": maximize, "foreach": foreach,
                    "differentiable": differentiable, "fused": fused,
                    **_optimlab_keys(backend, state_dtype, skip_nonfinite)}
        super().__init__(params, defaults)

    def rule_for(self, group: Mapping[str, Any]) -> tuple[Rule, dict[str, Any]]:
        """`sgd` for momentum 0 (PyTorch keeps no buffer then), else `momentum`."""
        if group["momentum"] == 0 and not group["nesterov"]:
            return RULES["sgd"], _hyperparameters(group, ("lr", "weight_decay", "maximize"))
        rule = RULES["momentum"]
        return rule, _hyperparameters(group, rule.hyperparameters)


class Momentum(SGD):
    """`SGD` with `momentum=0.9` by default: the heavy ball b ← γ b + g, θ ← θ − η b."""

    def __init__(self, params: Params, lr: float | torch.Tensor = 1e-3, momentum: float = 0.9,
                 dampening: float = 0, weight_decay: float = 0, nesterov: bool = False, **options: Any) -> None:
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov, **options)


class _RuleOptimizer(Optimizer):
    """An optimizer whose groups hold exactly its rule's hyperparameters (Adagrad, RMSprop, Adam)."""

    rule: Rule

    def rule_for(self, group: Mapping[str, Any]) -> tuple[Rule, dict[str, Any]]:
        """This class's rule; its hyperparameters are the group's keys of the same names."""
        return self.rule, _hyperparameters(group, self.rule.hyperparameters)


class Adagrad(_RuleOptimizer):
    """`torch.optim.Adagrad`: h ← h + g², θ ← θ − η_t g / (√(h + eps_root) + eps), η_t = η / (1 + (t − 1) lr_decay).

    Sparse gradients (e.g. from `nn.Embedding(sparse=True)`) update only the rows they touch, as PyTorch's.
    """

    torch_name = "Adagrad"
    rule = RULES["adagrad"]
    supports_sparse = True
    setstate_defaults = {"foreach": None, "maximize": False, "differentiable": False, "fused": None}

    def __init__(self, params: Params, lr: float | torch.Tensor = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0, eps: float = 1e-10,
                 foreach: bool | None = None, *, maximize: bool = False, differentiable: bool = False,
                 fused: bool | None = None, eps_root: float = 0.0, backend: str = "auto",
                 state_dtype: torch.dtype | None = None, skip_nonfinite: bool = False) -> None:
        defaults = {"lr": lr, "lr_decay": lr_decay, "eps": eps, "weight_decay": weight_decay,
                    "initial_accumulator_value": initial_accumulator_value, "foreach": foreach,
                    "maximize": maximize, "differentiable": differentiable, "fused": fused, "eps_root": eps_root,
                    **_optimlab_keys(backend, state_dtype, skip_nonfinite)}
        super().__init__(params, defaults)
        self._initialize_all_state()


class RMSprop(_RuleOptimizer):
    """`torch.optim.RMSprop`: s ← α s + (1 − α) g², θ ← θ − η g / (√(s + eps_root) + eps); `centered`, `momentum`."""

    torch_name = "RMSprop"
    rule = RULES["rmsprop"]
    setstate_defaults = {"momentum": 0, "centered": False, "foreach": None, "maximize": False,
                         "differentiable": False, "capturable": False}

    def __init__(self, params: Params, lr: float | torch.Tensor = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False, differentiable: bool = False, *,
                 eps_root: float = 0.0, backend: str = "auto", state_dtype: torch.dtype | None = None,
                 skip_nonfinite: bool = False) -> None:
        defaults = {"lr": lr, "momentum": momentum, "alpha": alpha, "eps": eps, "centered": centered,
                    "weight_decay": weight_decay, "capturable": capturable, "foreach": foreach,
                    "maximize": maximize, "differentiable": differentiable, "eps_root": eps_root,
                    **_optimlab_keys(backend, state_dtype, skip_nonfinite)}
        super().__init__(params, defaults)


class Adam(_RuleOptimizer):
    """`torch.optim.Adam`: m ← β1 m + (1 − β1) g, v ← β2 v + (1 − β2) g², θ ← θ − η m̂ / (√(v̂ + eps_root) + eps).

    `amsgrad`, `maximize`, L2 `weight_decay`, or decoupled decay with `decoupled_weight_decay=True` (AdamW).
    """

    torch_name = "Adam"
    rule = RULES["adam"]
    setstate_defaults = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                         "differentiable": False, "decoupled_weight_decay": False, "fused": None}

    def __init__(self, params: Params, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False, eps_root: float = 0.0,
                 backend: str = "auto", state_dtype: torch.dtype | None = None,
                 skip_nonfinite: bool = False) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad,
                    "maximize": maximize, "foreach": foreach, "capturable": capturable,
                    "differentiable": differentiable, "fused": fused,
                    "decoupled_weight_decay": decoupled_weight_decay, "eps_root": eps_root,
                    **_optimlab_keys(backend, state_dtype, skip_nonfinite)}
        super().__init__(params, defaults)


class AdamW(Adam):
    """`torch.optim.AdamW`: Adam with decoupled weight decay θ ← θ (1 − ηλ), λ = 0.01 by default."""

    torch_name = "AdamW"

    def __init__(self, params: Params, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, eps_root: float = 0.0, backend: str = "auto",
                 state_dtype: torch.dtype | None = None, skip_nonfinite: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, eps_root=eps_root, backend=backend,
                         state_dtype=state_dtype, skip_nonfinite=skip_nonfinite)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """As `torch.optim.AdamW`: decay stays decoupled whatever state dict is loaded."""
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


class NAdam(_RuleOptimizer):
    """`torch.optim.NAdam`: Adam with Nesterov momentum on the schedule μ_t = β1 (1 − ½ 0.96^(t ψ)).

    Per param it keeps `step` and `mu_product` (Π_t = Π_{t−1} μ_t) as float32 0-dim tensors, as PyTorch
    does, so checkpoints interchange both ways. `decoupled_weight_decay=True` is NAdamW.
    """

    torch_name = "NAdam"
    rule = RULES["nadam"]
    setstate_defaults = {"maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                         "decoupled_weight_decay": False}

    def __init__(self, params: Params, lr: float | torch.Tensor = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False, backend: str = "auto",
                 state_dtype: torch.dtype | None = None, skip_nonfinite: bool = False) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "momentum_decay": momentum_decay, "decoupled_weight_decay": decoupled_weight_decay,
                    "maximize": maximize, "foreach": foreach, "capturable": capturable,
                    "differentiable": differentiable, **_optimlab_keys(backend, state_dtype, skip_nonfinite)}
        super().__init__(params, defaults)


class LAMB(_RuleOptimizer):
    """LAMB (You et al. 2020) as optax formulates it: u = m̂ / (√v̂ + ε) + λθ, θ ← θ − η (‖θ‖ / ‖u‖) u per tensor.

    The trust ratio is 1 where either norm is 0. State as Adam's (`step`, `exp_avg`, `exp_avg_sq`). On FSDP2
    shards the two norms' partial sums are all-reduced over the shard group, so every shard takes the ratio
    of the whole tensor.
    """

    torch_name = "LAMB"
    rule = RULES["lamb"]
    setstate_defaults = {"differentiable": False}

    def __init__(self, params: Params, lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *, backend: str = "auto",
                 state_dtype: torch.dtype | None = None, skip_nonfinite: bool = False) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "differentiable": False,
                    **_optimlab_keys(backend, state_dtype, skip_nonfinite)}
        super().__init__(params, defaults)


class Lion(_RuleOptimizer):
    """Lion (Chen et al. 2023): θ ← θ (1 − ηλ) − η sign(β1 m + (1 − β1) g), m ← β2 m + (1 − β2) g.

    The `lion-pytorch` package's `Lion` step for step, with its state (`exp_avg`, no step counter), so
    their state dicts load into each other.
    """

    torch_name = "Lion"
    rule = RULES["lion"]
    counts_steps = False
    setstate_defaults = {"differentiable": False}  # read by torch.optim's step decorator; lion-pytorch lacks it

    def __init__(self, params: Params, lr: float | torch.Tensor = 1e-4,
                 betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.99), weight_decay: float = 0.0,
                 *, backend: str = "auto", state_dtype: torch.dtype | None = None,
                 skip_nonfinite: bool = False) -> None:
        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay, "differentiable": False,
                    **_optimlab_keys(backend, state_dtype, skip_nonfinite)}
        super().__init__(params, defaults)


class AdamWScheduleFree(_RuleOptimizer):
    """Schedule-Free AdamW (Defazio et al. 2024), as `schedulefree.AdamWScheduleFree`: no lr schedule; the
    params hold y, between AdamW's iterate z and the average x of the z's (see `optimlab.rules.adamw_schedulefree`).

    Like the reference it needs `optimizer.train()` before training steps and `optimizer.eval()` before
    evaluating or saving a checkpoint: `eval()` puts x in the params, `train()` puts y back (both do nothing
    in the mode they are already in), and `step` refuses to run in eval mode. The group-level state (`k`,
    `weight_sum`, `lr_max`, `scheduled_lr`, `train_mode`) lives in the param groups under the reference's keys,
    the per-param state (`z`, `exp_avg_sq`, and `exp_avg` with `inner_momentum`) under its names, so state
    dicts load both ways. `foreach` is accepted and ignored: the backend decides how the update runs.
    """

    torch_name = "AdamWScheduleFree"
    rule = RULES["adamw_schedulefree"]
    counts_steps = False
    # keys an older schedulefree lacks (`scheduled_lr`, `inner_momentum`), and the step decorator's key
    setstate_defaults = {"scheduled_lr": 0.0, "inner_momentum": 0.0, "differentiable": False}

    def __init__(self, params: Params, lr: float | torch.Tensor = 0.0025, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, inner_momentum: float = 0.0, foreach: bool | None = True, *,
                 backend: str = "auto", state_dtype: torch.dtype | None = None, skip_nonfinite: bool = False) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "r": r, "warmup_steps": warmup_steps, "train_mode": False,
                    **self.rule.initial_group_state(self.rule.hyperparameters), "weight_lr_power": weight_lr_power,
                    "weight_decay": weight_decay, "inner_momentum": inner_momentum, "foreach": foreach,
                    "differentiable": False, **_optimlab_keys(backend, state_dtype, skip_nonfinite)}
        super().__init__(params, defaults)

    def _validate_group(self, group: Mapping[str, Any]) -> None:
        super()._validate_group(group)
        if not isinstance(group["train_mode"], bool):
            raise ValueError(f"Invalid train_mode: {group['train_mode']!r} (expected True or False)")
        k = group["k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"Invalid k: {k!r} (the group's step count: a whole number >= 0)")

    def step(self, closure: Any = None) -> Any:
        """One update (see `Optimizer.step`); `RuntimeError`, changing nothing, where a group is in eval mode."""
        for index, group in enumerate(self.param_groups):
            if not group["train_mode"]:
                raise RuntimeError(f"{self.torch_name}: param group {index} is not in train mode: call "
                                   f"optimizer.train() before training steps and optimizer.eval() before "
                                   f"evaluating or saving a checkpoint")
        return super().step(closure)

    @torch.no_grad()
    def eval(self) -> None:
        """Put x = y + (1 − 1/β1)(z − y) in the params of the groups in train mode."""
        self._switch(to_train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Put y = x + (1 − β1)(z − x) back in the params of the groups in eval mode."""
        self._switch(to_train=True)

    def _switch(self, to_train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == to_train:
                continue
            beta1 = _to_scalar(group["betas"][0])
            weight = 1 - beta1 if to_train else 1 - 1 / beta1
            for param in group["params"]:
                z = self.state.get(param, {}).get("z")  # (`.get`: no empty state for params never stepped)
                if z is not None:
                    param.lerp_(z.to(device=param.device, dtype=param.dtype), weight)
            group["train_mode"] = to_train


class Muon(_RuleOptimizer):
    """`torch.optim.Muon` (Jordan et al. 2024): momentum B ← μB + (1 − μ)g, its (Nesterov) direction
    orthogonalized by Newton–Schulz in bfloat16, θ ← θ (1 − ηλ) − η_adj NS(B̃), for 2-D params only.

    The Newton–Schulz step is a tensor stage of the rule (matrix products over each whole param): the fused
    backends decline it, so `backend="auto"` runs it on eager and `backend="numba"` raises why. A param
    sharded as a DTensor (FSDP2) holds part of a matrix and is refused. State as torch's (`momentum_buffer`,
    no `step`), so checkpoints interchange both ways. Not in the registry: the lab, trace and playground
    run on 2-D points, vectors, where Muon's matrix step has no meaning (docs/adding-an-optimizer.md).
    """

    torch_name = "Muon"
    rule = muon.RULE
    counts_steps = False
    supports_complex = False
    setstate_defaults = {"differentiable": False}  # read by torch.optim's step decorator; torch's Muon lacks it

    def __init__(self, params: Params, lr: float | torch.Tensor = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315), eps: float = 1e-7,
                 ns_steps: int = 5, adjust_lr_fn: str | None = None, *, backend: str = "auto",
                 state_dtype: torch.dtype | None = None, skip_nonfinite: bool = False) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
                    "ns_coefficients": ns_coefficients, "eps": eps, "ns_steps": ns_steps, "adjust_lr_fn": adjust_lr_fn,
                    "differentiable": False, **_optimlab_keys(backend, state_dtype, skip_nonfinite)}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Refuse params that are not matrices with torch's error: torch checks those given to its constructor,
        and this check covers groups added later too (torch's step raises for them)."""
        params = param_group["params"]
        if not isinstance(params, (torch.Tensor, set)):  # (a set: torch's TypeError follows)
            param_group["params"] = params = list(params)  # as torch does: a generator is read once
        for param in [params] if isinstance(params, torch.Tensor) else params:
            if isinstance(param, torch.Tensor) and param.ndim != 2:
                raise ValueError(f"Muon only supports 2D parameters whereas we found a parameter with size: "
                                 f"{param.size()}")
        super().add_param_group(param_group)


class Adafactor(_RuleOptimizer):
    """`torch.optim.Adafactor` (Shazeer & Stern 2018): the second moment of a matrix factored into per-row
    and per-column averages of g² (`row_var` (..., R, 1), `col_var` (..., 1, C), over the last two axes), of a
    vector kept whole (`variance`); the relative step ρ_t = min(η, 1/√t) scaled by max(ε2, RMS(θ)), the update
    U = g/√V̂ clipped to RMS(U) ≤ d, decoupled decay θ ← θ(1 − ηλ). ε1 = None is the machine epsilon of the
    group's first param's dtype, as torch's.

    Row and column sums are the rule contract's stage (b), both RMS values stage (a): every backend runs them
    (eager, numba, triton). State as torch's (`step`, and `row_var`/`col_var` or `variance`), so checkpoints
    interchange both ways. `foreach` is accepted and ignored (the math is the same). On params sharded as
    DTensors (FSDP2's `Shard(0)`) a shard's partial column sums are all-reduced and its per-row tensors gathered
    before the rows and columns are finished; `row_var` is sharded with the rows, `col_var` replicated
    (docs/distributed.md). Complex params are refused, as torch's.
    """

    torch_name = "Adafactor"
    rule = adafactor.RULE
    supports_complex = False
    setstate_defaults = {"foreach": None, "differentiable": False}  # read by torch.optim's step decorator

    def __init__(self, params: Params, lr: float | torch.Tensor = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: bool | None = None, maximize: bool = False, backend: str = "auto",
                 state_dtype: torch.dtype | None = None, skip_nonfinite: bool = False) -> None:
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        defaults = {"lr": lr, "beta2_decay": beta2_decay, "eps": eps, "d": d, "weight_decay": weight_decay,
                    "foreach": foreach, "maximize": maximize, "differentiable": False,
                    **_optimlab_keys(backend, state_dtype, skip_nonfinite)}
        super().__init__(params, defaults)


def create(name: str, params: Params, **hyperparameters: Any) -> Optimizer:
    """An optimizer by name, e.g. `create("adamw", model.parameters(), lr=3e-4)`.

    Names are those of `optimlab.rules.REGISTRY` (case-insensitive), each entry naming its class here;
    `ValueError` for an unknown one.
    """
    lookup(name)
    entry = REGISTRY[name.lower()]
    cls = globals()[entry.torch_class]
    return cls(params, **{**entry.torch_overrides, **hyperparameters})


def backends() -> list[str]:
    """The registered backend names, in the order `backend="auto"` tries them."""
    return load_optional_backends()


__all__ = ["LAMB", "SGD", "Adafactor", "Adagrad", "Adam", "AdamW", "AdamWScheduleFree", "Lion", "Momentum", "Muon",
           "NAdam", "Optimizer", "RMSprop", "backends", "create"]
