"""The four torch.distributed scenarios, run by `worker.py` in every rank of a real process group.

Each trains a tiny model twice in the same processes — with `torch.optim` and with optimlab's drop-in class
on a given backend — under the same parallelism, and asserts the results agree:

* `ddp_*`: `DistributedDataParallel`, AdamW;
* `fsdp2_*`: `fully_shard` (params are `DTensor` shards), each optimizer (SGD with Nesterov momentum,
  Adagrad, RMSprop, Adam, AdamW, NAdam with its per-param scalar state `mu_product`);
* `fsdp2_lamb_*`: LAMB on `fully_shard`-ed params (uneven shards, an empty one) against LAMB on the whole
  tensors under DDP, optimlab's eager and the paper's written in float64 (`lamb_reference.py`): each shard's
  trust ratio must be the whole tensor's (partial sums all-reduced);
* `fsdp2_schedulefree_*`: Schedule-Free AdamW on `fully_shard`-ed params (z sharded with them, uneven shards,
  an empty one) against the `schedulefree` package on the whole tensors under DDP, in train and eval mode;
* `fsdp2_adafactor_*`: Adafactor on `fully_shard`-ed params (matrices with uneven shards and an empty one, a
  3-D stack, vectors) against `torch.optim.Adafactor` on the whole tensors under DDP: the column sums of a
  shard's rows are all-reduced, the per-row state sharded with the rows, the per-column state replicated;
* `fsdp2_clipped_*`: SGD with momentum after clipping by the global gradient norm (a rule from outside the
  package with a group reduction, `clipped_momentum.py`) on `fully_shard`-ed params against
  `clip_grad_norm_` and `torch.optim.SGD` on the whole tensors under DDP: every shard clips by the norm of
  the whole model (partial sums all-reduced, then totalled over the group);
* `zero_*`: `ZeroRedundancyOptimizer(optimizer_class=...)`, its state dict consolidated on rank 0 and
  loaded back;
* `dcp_*`: `torch.distributed.checkpoint` under FSDP2, saved mid-training and restored into a fresh model and
  optimizer, which must continue exactly as the uninterrupted run; checkpoints also load across optimlab and
  `torch.optim` both ways.

A scenario is named `<parallelism>_<backend>`; the functions at the bottom of this file are what the tests name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

STEPS = 4
#: Hyperparameters away from the defaults, so that every term of each rule matters.
CONFIGS = {
    "SGD": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    "Adagrad": {"lr": 0.05, "lr_decay": 0.01, "initial_accumulator_value": 0.1},
    "Adam": {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.01},
    "AdamW": {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1},
    "RMSprop": {"lr": 0.01, "alpha": 0.9, "momentum": 0.5, "centered": True},
    "NAdam": {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.01, "momentum_decay": 6e-3},
}
#: Per-param scalar state (0-dim tensors, the same in every rank, as torch keeps them): not sharded.
SCALAR_STATE = ("step", "mu_product")

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def optimizer_class(name: str, backend: str) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """`torch.optim.<name>` for backend "torch", else optimlab's class and the `backend` argument."""
    if backend == "torch":
        return getattr(torch.optim, name), {}
    import optimlab.torch

    return getattr(optimlab.torch, name), {"backend": backend}


def factory(name: str, backend: str) -> OptimizerFactory:
    cls, extra = optimizer_class(name, backend)
    return lambda params: cls(params, **CONFIGS[name], **extra)


def tiny_model(seed: int = 0) -> nn.Module:
    """Three linear layers, whose 8, 3 and 1 output rows shard over two ranks evenly, unevenly, and with an
    empty shard in rank 1."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3), nn.Tanh(), nn.Linear(3, 1))


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Different data in each rank and step, the same in every run."""
    generator = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(5, 6, generator=generator), torch.randn(5, 1, generator=generator)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, rank: int, steps: range) -> None:
    for step in steps:
        inputs, targets = batch(rank, step)
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, or the tensor itself."""
    return (tensor.to_local() if isinstance(tensor, DTensor) else tensor).detach().clone()


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: local(param) for name, param in model.named_parameters()}


def state_of(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
    """The optimizer's per-param state keyed by param name, DTensors as local shards."""
    return {name: {key: local(value) for key, value in optimizer.state[param].items()}
            for name, param in model.named_parameters()}


def assert_same(actual: Any, expected: Any, what: str) -> None:
    """Bit-identical tensors (in nested dicts)."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=lambda message: f"{what}: {message}")


def assert_matches_torch(actual: Any, expected: Any, what: str, backend: str) -> None:
    """optimlab on `backend` against `torch.optim`: equal within float32 rounding (`assert_close`'s float32
    tolerances). Not bit for bit: the rule's operation order differs from PyTorch's fused ops in places (the
    rule's `(1 − β2) g g` against `addcmul`), and numba rounds some sub-expressions through float64."""
    torch.testing.assert_close(actual, expected,
                               msg=lambda message: f"{what} ({backend} against torch.optim): {message}")


# --- DDP ------------------------------------------------------------------------------------------------

def ddp(rank: int, world_size: int, workdir: Path, *, name: str, backend: str) -> None:
    def run(make_optimizer: OptimizerFactory) -> dict[str, torch.Tensor]:
        model = tiny_model()
        wrapped = DistributedDataParallel(model)
        train(wrapped, make_optimizer(wrapped.parameters()), rank, range(STEPS))
        return params_of(model)

    assert_matches_torch(run(factory(name, backend)), run(factory(name, "torch")),
                         f"{name} params after DDP training", backend)


# --- FSDP2 ----------------------------------------------------------------------------------------------

def sharded_model(world_size: int, seed: int = 0) -> nn.Module:
    """`tiny_model` with each linear layer and the root `fully_shard`-ed: params become DTensor shards."""
    mesh = init_device_mesh("cpu", (world_size,))
    model = tiny_model(seed)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert all(isinstance(param, DTensor) for param in model.parameters())
    return model


def fsdp2(rank: int, world_size: int, workdir: Path, *, backend: str) -> None:
    for name in CONFIGS:
        results = {}
        for kind in (backend, "torch"):
            model = sharded_model(world_size)
            optimizer = factory(name, kind)(model.parameters())
            train(model, optimizer, rank, range(STEPS))
            for state in optimizer.state.values():
                for key, value in state.items():
                    assert key in SCALAR_STATE or isinstance(value, DTensor), \
                        f"{kind} {name}: state {key!r} is not sharded"
            results[kind] = params_of(model), state_of(model, optimizer)
        assert_matches_torch(results[backend][0], results["torch"][0],
                             f"{name} local param shards after FSDP2 training", backend)
        assert_matches_torch(results[backend][1], results["torch"][1],
                             f"{name} local state shards after FSDP2 training", backend)


def fsdp2_lamb(rank: int, world_size: int, workdir: Path, *, backend: str) -> None:
    import optimlab.torch

    settings = {"lr": 0.02, "betas": (0.8, 0.99), "weight_decay": 0.1}
    model = sharded_model(world_size)
    train(model, optimlab.torch.LAMB(model.parameters(), backend=backend, **settings), rank, range(STEPS))
    sharded = {name: param.full_tensor().detach() for name, param in model.named_parameters()}
    whole = tiny_model()
    wrapped = DistributedDataParallel(whole)
    train(wrapped, optimlab.torch.LAMB(wrapped.parameters(), backend="eager", **settings), rank, range(STEPS))
    assert_matches_torch(sharded, {name: param.detach() for name, param in whole.named_parameters()},
                         "LAMB params trained on FSDP2 shards against the whole tensors under DDP", backend)
    # and against LAMB written from the paper in float64 (lamb_reference.py), nothing of optimlab's in it
    from lamb_reference import PaperLAMB

    paper = tiny_model()
    wrapped = DistributedDataParallel(paper)
    train(wrapped, PaperLAMB(wrapped.parameters(), **settings), rank, range(STEPS))
    assert_matches_torch(sharded, {name: param.detach() for name, param in paper.named_parameters()},
                         "LAMB params trained on FSDP2 shards against the paper's LAMB (float64) under DDP", backend)


def fsdp2_schedulefree(rank: int, world_size: int, workdir: Path, *, backend: str) -> None:
    """Schedule-Free AdamW on FSDP2 shards (z sharded like its param: uneven shards, an empty one) against the
    `schedulefree` package on the whole tensors under DDP: y while training, x after `eval()`, y again after
    `train()`, and the group state (host scalars, the same in every rank)."""
    import schedulefree

    import optimlab.torch

    settings = {"lr": 0.02, "betas": (0.8, 0.99), "weight_decay": 0.1, "warmup_steps": 2}

    def run(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[dict[str, torch.Tensor]]:
        optimizer.train()
        train(model, optimizer, rank, range(STEPS))
        points = []
        for mode in ("eval", "train"):
            getattr(optimizer, mode)()
            points.append({name: full(param) for name, param in model.named_parameters()})
        return points

    def full(tensor: torch.Tensor) -> torch.Tensor:
        return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().clone()

    model = sharded_model(world_size)
    ours = optimlab.torch.AdamWScheduleFree(model.parameters(), backend=backend, **settings)
    sharded = run(model, ours)
    assert all(isinstance(ours.state[param]["z"], DTensor) and ours.state[param]["z"].placements == param.placements
               for param in model.parameters())
    whole = tiny_model()
    wrapped = DistributedDataParallel(whole)
    reference = schedulefree.AdamWScheduleFree(wrapped.parameters(), **settings)
    expected = run(wrapped, reference)
    for what, actual, want in zip(("x after eval()", "y after train()"), sharded, expected, strict=True):
        assert_matches_torch(actual, {name.removeprefix("module."): value for name, value in want.items()},
                             f"Schedule-Free AdamW {what} on FSDP2 shards against schedulefree under DDP", backend)
    keys = ("k", "weight_sum", "lr_max", "scheduled_lr", "train_mode")
    assert {key: ours.param_groups[0][key] for key in keys} == {key: reference.param_groups[0][key] for key in keys}


class StackedModel(nn.Module):
    """`tiny_model` plus a stack of three 4×2 matrices (a 3-D param: two matrices in rank 0, one in rank 1)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.layers = tiny_model(seed)
        self.stack = nn.Parameter(torch.randn(3, 4, 2) / 2)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        mixed = torch.einsum("bi,kij->bkj", inputs[:, :4], self.stack).tanh().mean(dim=(1, 2))
        return self.layers(inputs) + mixed[:, None]


def fsdp2_adafactor(rank: int, world_size: int, workdir: Path, *, backend: str) -> None:
    """Adafactor on `fully_shard`-ed params against `torch.optim.Adafactor` on the whole tensors under DDP, in
    float32 and float64 (`torch.optim.Adafactor` itself does not run on FSDP2 shards in torch 2.13: DTensor
    refuses its in-place `square_` of a partial column norm).

    The matrices' Shard(0) shards hold whole rows (8 rows evenly, 3 unevenly, 1 leaving rank 1 empty): their
    column sums are all-reduced, and `row_var` stays sharded with the rows while `col_var` is replicated; the
    3-D stack's shards hold whole matrices; the biases are vectors (elementwise second moment). The RMS values
    of θ and U are per-tensor sums, all-reduced as LAMB's. The state dict holds DTensors whose whole tensors
    are torch's state, and a distributed checkpoint of it resumes exactly."""
    import optimlab.torch

    settings = {"lr": 0.05, "beta2_decay": -0.6, "d": 1.5, "weight_decay": 0.1}

    def sharded(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
        mesh = init_device_mesh("cpu", (world_size,))
        model = StackedModel(seed)
        for layer in model.layers:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model, optimlab.torch.Adafactor(model.parameters(), backend=backend, **settings)

    # Resumed from the checkpoint (taken in float32, first), training continues exactly as the uninterrupted run.
    for dtype, tolerance in ((torch.float32, {}), (torch.float64, {"rtol": 1e-12, "atol": 1e-12})):
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # the models' params and the batches
        try:
            model, optimizer = sharded()
            train(model, optimizer, rank, range(STEPS // 2))
            if dtype == torch.float32:  # a distributed checkpoint mid-training, resumed below
                model_state, optimizer_state = get_state_dict(model, optimizer)
                dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=workdir / "checkpoint")
            train(model, optimizer, rank, range(STEPS // 2, STEPS))
            whole = StackedModel()
            wrapped = DistributedDataParallel(whole)
            reference = torch.optim.Adafactor(wrapped.parameters(), **settings)
            train(wrapped, reference, rank, range(STEPS))
        finally:
            torch.set_default_dtype(default)
        what = f"Adafactor in {dtype} on FSDP2 shards against torch.optim.Adafactor under DDP ({backend})"
        torch.testing.assert_close({name: param.full_tensor().detach() for name, param in model.named_parameters()},
                                   {name: param.detach() for name, param in whole.named_parameters()},
                                   **tolerance, msg=lambda message, what=what: f"{what}, params: {message}")
        state = optimizer.state_dict()["state"]
        for index, (name, param) in enumerate(model.named_parameters()):
            for key, value in state[index].items():
                if key == "step":
                    continue
                assert isinstance(value, DTensor), f"{name}: state {key!r} is not a DTensor"
                expected = [Replicate()] if key == "col_var" and param.ndim == 2 else [Shard(0)]
                assert list(value.placements) == expected, f"{name}: state {key!r} placed as {value.placements}"
        torch.testing.assert_close(
            {name: {key: value.full_tensor() for key, value in state[index].items() if key != "step"}
             for index, (name, _) in enumerate(model.named_parameters())},
            {name: {key: value for key, value in reference.state[param].items() if key != "step"}
             for name, param in whole.named_parameters()},
            **tolerance, msg=lambda message, what=what: f"{what}, whole state: {message}")
        if dtype == torch.float32:
            resumed, resumed_optimizer = sharded(seed=1)  # other initial values: the checkpoint replaces them
            model_state, optimizer_state = get_state_dict(resumed, resumed_optimizer)
            dcp.load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=workdir / "checkpoint")
            set_state_dict(resumed, resumed_optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
            train(resumed, resumed_optimizer, rank, range(STEPS // 2, STEPS))
            assert_same({"params": params_of(resumed), "state": state_of(resumed, resumed_optimizer)},
                        {"params": params_of(model), "state": state_of(model, optimizer)},
                        "Adafactor on FSDP2 shards resumed from a distributed checkpoint")


def fsdp2_clipped(rank: int, world_size: int, workdir: Path, *, backend: str) -> None:
    """The last layer's bias (one element: rank 1's shard is empty) gets no gradient in the first step, so from
    the second on its momentum is a step behind: two backend calls in one group, one norm over both."""
    from clipped_momentum import ClippedMomentum, TorchClippedMomentum

    settings = {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01, "max_norm": 0.1}

    def run(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        late = list(model.parameters())[-1]
        for step in range(STEPS):
            inputs, targets = batch(rank, step)
            nn.functional.mse_loss(model(inputs), targets).backward()
            if step == 0:
                late.grad = None
            optimizer.step()
            optimizer.zero_grad()

    model = sharded_model(world_size)
    run(model, ClippedMomentum(model.parameters(), backend=backend, **settings))
    sharded = {name: param.full_tensor().detach() for name, param in model.named_parameters()}
    whole = tiny_model()
    wrapped = DistributedDataParallel(whole)
    run(wrapped, TorchClippedMomentum(wrapped.parameters(), **settings))
    assert_matches_torch(sharded, {name: param.detach() for name, param in whole.named_parameters()},
                         "clipped momentum on FSDP2 shards against clip_grad_norm_ + SGD under DDP", backend)


def fsdp2_mismatched_gradient(rank: int, world_size: int, workdir: Path) -> None:
    """A DTensor param whose gradient is sharded differently is refused, not updated element by wrong element."""
    import optimlab.torch

    mesh = init_device_mesh("cpu", (world_size,))
    param = nn.Parameter(distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)]))
    param.grad = distribute_tensor(torch.ones(4, 2), mesh, [Replicate()])
    optimizer = optimlab.torch.Adam([param])
    try:
        optimizer.step()
    except ValueError as error:
        assert "placements" in str(error), error
    else:
        raise AssertionError("a Shard(0) param with a Replicate() gradient was updated")


# --- ZeroRedundancyOptimizer ------------------------------------------------------------------------------

def zero(rank: int, world_size: int, workdir: Path, *, backend: str) -> None:
    name = "Adam"

    def run(kind: str, steps: range, state_dict: dict | None = None):
        cls, extra = optimizer_class(name, kind)
        model = tiny_model()
        wrapped = DistributedDataParallel(model)
        optimizer = ZeroRedundancyOptimizer(wrapped.parameters(), optimizer_class=cls, **CONFIGS[name], **extra)
        if state_dict is not None:
            optimizer.load_state_dict(state_dict)
            with torch.no_grad():  # the params as they were when the state dict was taken
                for param, saved in zip(model.parameters(), state_dict["params"], strict=True):
                    param.copy_(saved)
        train(wrapped, optimizer, rank, steps)
        optimizer.consolidate_state_dict(to=0)
        consolidated = optimizer.state_dict() if rank == 0 else None
        if consolidated is not None:
            consolidated["params"] = [param.detach().clone() for param in model.parameters()]
        return params_of(model), consolidated

    params, consolidated = run(backend, range(STEPS))
    expected_params, expected_consolidated = run("torch", range(STEPS))
    assert_matches_torch(params, expected_params, f"{name} params after ZeRO training", backend)
    if rank == 0:
        assert_matches_torch(consolidated["state"], expected_consolidated["state"], "consolidated state", backend)
        for group, expected_group in zip(consolidated["param_groups"], expected_consolidated["param_groups"],
                                         strict=True):
            assert group["params"] == expected_group["params"], "consolidated param indices"
            for key in ("lr", "betas", "eps", "weight_decay"):
                assert group[key] == expected_group[key], f"consolidated param group {key!r}"

    # Every rank loads the consolidated dict (broadcast from rank 0) and continues as if never stopped.
    shared = [consolidated]
    dist.broadcast_object_list(shared, src=0)
    resumed, _ = run(backend, range(STEPS, STEPS + 2), shared[0])
    uninterrupted, _ = run(backend, range(STEPS + 2))
    assert_same(resumed, uninterrupted, f"{name} params resumed from the consolidated state dict")


# --- distributed checkpoint under FSDP2 ---------------------------------------------------------------

def dcp_resume(rank: int, world_size: int, workdir: Path, *, backend: str) -> None:
    name = "AdamW"
    middle, end = STEPS // 2, STEPS + 2

    def uninterrupted(kind: str, checkpoint: Path | None) -> dict:
        model = sharded_model(world_size)
        optimizer = factory(name, kind)(model.parameters())
        train(model, optimizer, rank, range(middle))
        if checkpoint is not None:
            model_state, optimizer_state = get_state_dict(model, optimizer)
            dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint)
        train(model, optimizer, rank, range(middle, end))
        return {"params": params_of(model), "state": state_of(model, optimizer)}

    def resumed(kind: str, checkpoint: Path) -> dict:
        model = sharded_model(world_size, seed=1)  # other initial values: the checkpoint must replace them
        optimizer = factory(name, kind)(model.parameters())
        model_state, optimizer_state = get_state_dict(model, optimizer)
        # Partial load: a checkpoint written with torch.optim lacks optimlab's extra group keys (`eps_root`,
        # `backend`, ...); those then keep this optimizer's settings.
        dcp.load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint,
                 planner=DefaultLoadPlanner(allow_partial_load=True))
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
        train(model, optimizer, rank, range(middle, end))
        return {"params": params_of(model), "state": state_of(model, optimizer)}

    ours, theirs = workdir / backend, workdir / "torch"
    expected = uninterrupted(backend, ours)
    assert_same(resumed(backend, ours), expected, f"{name} resumed from a distributed checkpoint")
    reference = uninterrupted("torch", theirs)
    assert_matches_torch(expected, reference, f"{name} under FSDP2", backend)
    assert_matches_torch(resumed(backend, theirs), reference,
                         f"{name} resumed from torch.optim's distributed checkpoint", backend)
    assert_matches_torch(expected, resumed("torch", ours),
                         f"torch.optim's {name} resumed from optimlab's distributed checkpoint", backend)


BACKENDS = ("eager", "numba")
for _backend in BACKENDS:
    globals()[f"ddp_adamw_{_backend}"] = functools.partial(ddp, name="AdamW", backend=_backend)
    globals()[f"fsdp2_{_backend}"] = functools.partial(fsdp2, backend=_backend)
    globals()[f"fsdp2_lamb_{_backend}"] = functools.partial(fsdp2_lamb, backend=_backend)
    globals()[f"fsdp2_adafactor_{_backend}"] = functools.partial(fsdp2_adafactor, backend=_backend)
    globals()[f"fsdp2_clipped_{_backend}"] = functools.partial(fsdp2_clipped, backend=_backend)
    globals()[f"fsdp2_schedulefree_{_backend}"] = functools.partial(fsdp2_schedulefree, backend=_backend)
    globals()[f"zero_adam_{_backend}"] = functools.partial(zero, backend=_backend)
    globals()[f"dcp_resume_{_backend}"] = functools.partial(dcp_resume, backend=_backend)
