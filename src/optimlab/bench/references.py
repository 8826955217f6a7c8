"""What `optimlab bench` races each registered optimizer against: the table `REFERENCES`, in one place.

* torch.optim, where it has the optimizer: its forloop, foreach and fused implementations (those that exist
  on the params' device), given the same arguments as the drop-in `optimlab.torch` class;
* Lion: the `lion-pytorch` package (a dev dependency, the reference its equivalence tests use), its `Lion`
  (a loop over params: "forloop") and `lion_pytorch.foreach.Lion` ("foreach"); none where it is not
  installed;
* Schedule-Free AdamW: the `schedulefree` package (a dev dependency, as for its equivalence tests), its
  `AdamWScheduleFree` with `foreach=False` ("forloop") and `foreach=True` ("foreach"), each put in train
  mode (`in_train_mode`) as the drop-in class is; none where it is not installed;
* LAMB: torch.optim has no LAMB, nor has any installed package for the CPU. `ForeachLAMB` is written here
  from the paper in torch's own multi-tensor style — one `torch._foreach_*` call per operation over all of
  a group's tensors, as `torch.optim.Adam(foreach=True)` is written, the two norms by `torch._foreach_norm`
  — so it is a fair implementation to race, though not an independent one (a test holds it equal to
  `optimlab.torch.LAMB`).

An optimizer missing here is still benchmarked, with no reference: its table row shows only its time, its
bandwidth and their fraction of the roofline.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

#: The implementations a reference may have, in the order of the report's columns.
VARIANTS = ("forloop", "foreach", "fused")


@dataclass(frozen=True)
class Reference:
    """An implementation to race: `label` names it in the report, `variants` builds each of its forms.

    `variants[name](params, **arguments)` returns a `torch.optim.Optimizer` (`name` one of `VARIANTS`);
    `arguments` are those a case passes to both the drop-in class and the reference: `lr`, this table's
    `arguments` (torch.optim.SGD needs `momentum=0.9`, optimlab's `Momentum` has it by default), then the
    case's configuration (`centered=True`).
    """

    label: str
    variants: Mapping[str, Callable[..., torch.optim.Optimizer]]
    arguments: Mapping[str, Any] = field(default_factory=dict)


#: An optimizer with nothing to race against.
NO_REFERENCE = Reference("none", MappingProxyType({}))


def torch_optim(class_name: str, **arguments: Any) -> Reference:
    """`torch.optim.<class_name>` with `foreach=False`, `foreach=True` and `fused=True`."""
    cls = getattr(torch.optim, class_name)
    return Reference(f"torch.optim.{class_name}",
                     MappingProxyType({"forloop": functools.partial(cls, foreach=False),
                                       "foreach": functools.partial(cls, foreach=True),
                                       "fused": functools.partial(cls, fused=True)}),
                     MappingProxyType(arguments))


def lion_pytorch() -> Reference:
    """The `lion-pytorch` package's `Lion`, as a loop and in its foreach form; `NO_REFERENCE` without it."""
    if importlib.util.find_spec("lion_pytorch") is None:
        return Reference("none (lion-pytorch is not installed)", MappingProxyType({}))

    def forloop(params: Iterable[torch.Tensor], **arguments: Any) -> torch.optim.Optimizer:
        from lion_pytorch import Lion

        return Lion(params, **arguments)

    def foreach(params: Iterable[torch.Tensor], **arguments: Any) -> torch.optim.Optimizer:
        from lion_pytorch.foreach import Lion

        return Lion(params, **arguments)

    return Reference(f"lion-pytorch {importlib.metadata.version('lion-pytorch')} (Lion, foreach.Lion)",
                     MappingProxyType({"forloop": forloop, "foreach": foreach}))


def schedulefree_package() -> Reference:
    """The `schedulefree` package's `AdamWScheduleFree`, per param and foreach; `NO_REFERENCE` without it."""
    if importlib.util.find_spec("schedulefree") is None:
        return Reference("none (schedulefree is not installed)", MappingProxyType({}))

    def variant(foreach: bool) -> Callable[..., torch.optim.Optimizer]:
        def make(params: Iterable[torch.Tensor], **arguments: Any) -> torch.optim.Optimizer:
            from schedulefree import AdamWScheduleFree

            return AdamWScheduleFree(params, **arguments, foreach=foreach)
        return make

    return Reference(f"schedulefree {importlib.metadata.version('schedulefree')} (AdamWScheduleFree)",
                     MappingProxyType({"forloop": variant(False), "foreach": variant(True)}))


def in_train_mode(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """`optimizer`, ready to step: those with a train mode (Schedule-Free's `train()`/`eval()`) put in it."""
    train = getattr(optimizer, "train", None)
    if callable(train):
        train()
    return optimizer


class ForeachLAMB(torch.optim.Optimizer):
    """LAMB (You et al. 2020) as optax formulates it and `optimlab.rules.lamb` does, in torch's foreach style.

        m ← β1 m + (1 − β1) g        v ← β2 v + (1 − β2) g²
        u = (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε) + λθ
        r = ‖θ‖ / ‖u‖ per tensor (1 where either norm is 0)        θ ← θ − η r u

    Each line is one `torch._foreach_*` call over the group's tensors (u and the denominator are the two
    temporaries, as torch's foreach Adam allocates); the step count is the group's.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            if not params:
                continue
            for param in params:
                if not self.state[param]:
                    self.state[param]["exp_avg"] = torch.zeros_like(param)
                    self.state[param]["exp_avg_sq"] = torch.zeros_like(param)
            grads = [param.grad for param in params]
            exp_avgs = [self.state[param]["exp_avg"] for param in params]
            exp_avg_sqs = [self.state[param]["exp_avg_sq"] for param in params]
            group["step"] = step = group.get("step", 0) + 1
            beta1, beta2 = group["betas"]
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
            denominators = torch._foreach_div(exp_avg_sqs, 1 - beta2 ** step)
            torch._foreach_sqrt_(denominators)
            torch._foreach_add_(denominators, group["eps"])
            updates = torch._foreach_div(exp_avgs, 1 - beta1 ** step)
            torch._foreach_div_(updates, denominators)
            del denominators
            if group["weight_decay"] != 0:
                torch._foreach_add_(updates, params, alpha=group["weight_decay"])
            param_norms = torch.stack(torch._foreach_norm(params))
            update_norms = torch.stack(torch._foreach_norm(updates))
            trust_ratios = torch.where((param_norms > 0) & (update_norms > 0), param_norms / update_norms, 1.0)
            torch._foreach_mul_(updates, list(trust_ratios.unbind()))
            torch._foreach_add_(params, updates, alpha=-group["lr"])
        return loss


#: Registry name → what it is raced against. An entry of `optimlab.rules.REGISTRY` missing here has none.
REFERENCES: Mapping[str, Reference] = MappingProxyType({
    "sgd": torch_optim("SGD"),
    "momentum": torch_optim("SGD", momentum=0.9),
    "nesterov": torch_optim("SGD", momentum=0.9, nesterov=True),
    "adagrad": torch_optim("Adagrad"),
    "rmsprop": torch_optim("RMSprop"),
    "adam": torch_optim("Adam"),
    "adamw": torch_optim("AdamW"),
    "nadam": torch_optim("NAdam"),
    "lion": lion_pytorch(),
    "adamw_schedulefree": schedulefree_package(),
    "lamb": Reference("optimlab.bench.references.ForeachLAMB (from the paper; torch.optim has no LAMB)",
                      MappingProxyType({"foreach": ForeachLAMB})),
})

__all__ = ["NO_REFERENCE", "REFERENCES", "VARIANTS", "ForeachLAMB", "Reference", "in_train_mode", "lion_pytorch",
           "schedulefree_package", "torch_optim"]
