"""`step` counters: advanced as torch.optim advances them, only after a successful update, with no compiler."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import optimlab
import optimlab.torch
from optimlab.backends import BACKENDS

#: optimlab class, arguments under which every state tensor and the step count matter.
OPTIMIZERS = [
    pytest.param("Adam", {"lr": 0.01, "amsgrad": True}, id="Adam"),
    pytest.param("AdamW", {"lr": 0.01, "weight_decay": 0.1}, id="AdamW"),
    pytest.param("Adagrad", {"lr": 0.1, "lr_decay": 0.01}, id="Adagrad"),
    pytest.param("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5}, id="RMSprop"),
    pytest.param("SGD", {"lr": 0.01, "momentum": 0.9, "dampening": 0.5}, id="SGD"),
]


def gradients(count: int, seed: int = 0) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(4, 3, generator=generator, dtype=torch.float64), torch.randn(3, generator=generator,
                                                                                     dtype=torch.float64)]
            for _ in range(count)]


def params_pair(seed: int = 1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    ours = [torch.randn(4, 3, generator=generator, dtype=torch.float64).requires_grad_(),
            torch.randn(3, generator=generator, dtype=torch.float64).requires_grad_()]
    return ours, [param.detach().clone().requires_grad_() for param in ours]


def step_with(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad.clone()
    optimizer.step()


def snapshot(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> list:
    """The params' values and every state value, copied."""
    state = [{key: value.clone() if torch.is_tensor(value) else value for key, value in optimizer.state[p].items()}
             for p in params if optimizer.state.get(p)]
    return [param.detach().clone() for param in params] + state


def assert_equal_snapshots(first: list, second: list) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_step_tensors_version_advances_once_per_step_as_in_torch(backend):
    ours, theirs = params_pair()
    optimizer = optimlab.torch.Adam(ours, lr=0.01, backend=backend)
    reference = torch.optim.Adam(theirs, lr=0.01)
    increments: dict[str, list[list[int]]] = {"ours": [], "theirs": []}
    for step, grads in enumerate(gradients(4)):
        for name, opt, params in (("ours", optimizer, ours), ("theirs", reference, theirs)):
            before = [opt.state[param]["step"]._version for param in params] if step else None
            step_with(opt, params, grads)
            if before is not None:
                after = [opt.state[param]["step"]._version for param in params]
                increments[name].append([b - a for a, b in zip(before, after, strict=True)])
    assert increments["ours"] == increments["theirs"] == [[1, 1]] * 3
    assert [optimizer.state[param]["step"].item() for param in ours] == [4.0, 4.0]
    assert all(optimizer.state[param]["step"].dtype == torch.float32 for param in ours)


def only_through_step(monkeypatch, backend):
    """Plans call `backend.step` (which the tests make fail), not tables a backend prepared for them."""
    monkeypatch.setattr(BACKENDS[backend], "prepare", None, raising=False)


@pytest.mark.parametrize("fail_at", [0, 2], ids=["first-step", "third-step"])
@pytest.mark.parametrize(("name", "kwargs"), OPTIMIZERS)
def test_a_failed_step_changes_nothing(backend, monkeypatch, name, kwargs, fail_at):
    only_through_step(monkeypatch, backend)
    ours, theirs = params_pair()
    optimizer = getattr(optimlab.torch, name)(ours, backend=backend, **kwargs)
    reference = getattr(torch.optim, name)(theirs, **kwargs)
    grads = gradients(fail_at + 2)
    for step in range(fail_at):
        step_with(optimizer, ours, grads[step])
        step_with(reference, theirs, grads[step])
    before = snapshot(optimizer, ours)
    with monkeypatch.context() as patch:
        def failing_step(*arguments, **options):
            raise RuntimeError("backend failure")

        patch.setattr(BACKENDS[backend], "step", failing_step)
        with pytest.raises(RuntimeError, match="backend failure"):
            step_with(optimizer, ours, grads[fail_at])
    assert_equal_snapshots(snapshot(optimizer, ours), before)
    for grads_now in grads[fail_at:]:
        step_with(optimizer, ours, grads_now)
        step_with(reference, theirs, grads_now)
    for mine, torchs in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, torchs, rtol=1e-12, atol=1e-15)
        for key, value in reference.state[torchs].items():
            torch.testing.assert_close(optimizer.state[mine][key].double(), value.double(), rtol=1e-12, atol=1e-15)


def test_a_failing_group_leaves_its_counters_as_they_were(backend, monkeypatch):
    only_through_step(monkeypatch, backend)
    first, second = params_pair()
    optimizer = optimlab.torch.Adam([{"params": first}, {"params": second, "lr": 0.5}], lr=0.01, backend=backend)
    grads = gradients(1)[0]
    step_with(optimizer, first + second, grads + grads)
    real_step = BACKENDS[backend].step

    def failing_for_the_second_group(rule, hyperparameters, *arguments, **options):
        if hyperparameters["lr"] == 0.5:
            raise RuntimeError("backend failure")
        real_step(rule, hyperparameters, *arguments, **options)

    monkeypatch.setattr(BACKENDS[backend], "step", failing_for_the_second_group)
    with pytest.raises(RuntimeError, match="backend failure"):
        step_with(optimizer, first + second, grads + grads)
    # the first group's update was applied and counted; the second's neither
    assert [optimizer.state[param]["step"].item() for param in first] == [2.0, 2.0]
    assert [optimizer.state[param]["step"].item() for param in second] == [1.0, 1.0]


def test_a_first_step_failing_in_one_group_leaves_no_state_in_any(backend, monkeypatch):
    """Every group's plan (and state) is built before any group updates: when the first group fails, the later
    groups' new state goes too, and the next step is torch.optim's first."""
    only_through_step(monkeypatch, backend)
    first, second = params_pair()
    optimizer = optimlab.torch.NAdam([{"params": first, "lr": 0.5}, {"params": second}], lr=0.01, backend=backend)
    grads = gradients(1)[0]
    real_step = BACKENDS[backend].step

    def failing_for_the_first_group(rule, hyperparameters, *arguments, **options):
        if hyperparameters["lr"] == 0.5:
            raise RuntimeError("backend failure")
        real_step(rule, hyperparameters, *arguments, **options)

    with monkeypatch.context() as patch:
        patch.setattr(BACKENDS[backend], "step", failing_for_the_first_group)
        with pytest.raises(RuntimeError, match="backend failure"):
            step_with(optimizer, first + second, grads + grads)
    assert dict(optimizer.state) == {}
    theirs = [param.detach().clone().requires_grad_() for param in first + second]
    reference = torch.optim.NAdam([{"params": theirs[:2], "lr": 0.5}, {"params": theirs[2:]}], lr=0.01)
    step_with(optimizer, first + second, grads + grads)
    step_with(reference, theirs, grads + grads)
    for mine, torchs in zip(first + second, theirs, strict=True):
        torch.testing.assert_close(mine, torchs, rtol=1e-12, atol=1e-15)
        for key, value in reference.state[torchs].items():
            torch.testing.assert_close(optimizer.state[mine][key].double(), value.double(), rtol=1e-12, atol=1e-15)


ALL_COUNTING = """
import sys
import torch
import optimlab.torch as otorch
for name in ("Adam", "AdamW", "Adagrad", "RMSprop"):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = getattr(otorch, name)([param], backend=sys.argv[1])
    for _ in range(2):
        param.grad = torch.ones(3)
        optimizer.step()
    assert optimizer.state[param]["step"].item() == 2.0, name
print("numba imported" if "numba" in sys.modules else "numba not imported")
"""


def test_eager_backend_compiles_nothing():
    """Counting steps under `backend="eager"` needs no compiler: Numba is not even imported."""
    result = subprocess.run([sys.executable, "-c", ALL_COUNTING, "eager"], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numba not imported"


def _read_only_copy_of_the_package() -> Path:
    """`optimlab`'s source copied to a fresh directory that nobody can write (readable by everyone)."""
    root = Path(tempfile.mkdtemp(prefix="optimlab-read-only-"))
    shutil.copytree(Path(optimlab.__file__).parent, root / "optimlab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return root


def _make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["eager", "numba"])
def test_read_only_install_with_an_unwritable_home(backend_name):
    """A service account on a read-only filesystem: no writable package directory, home or cache directory."""
    if backend_name not in optimlab.torch.backends():
        pytest.skip(f"backend {backend_name!r} is not registered here")
    as_user: list[str] = []  # as ourselves, unless root (whom read-only permissions do not stop): then nobody
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop to a user the read-only files stop")
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    root = _read_only_copy_of_the_package()
    try:
        environment = {key: value for key, value in os.environ.items()
                       if key not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "OPTIMLAB_KERNEL_CACHE", "PYTHONPATH")}
        environment.update(HOME="/nonexistent/home", PYTHONPATH=str(root))
        probe = subprocess.run([*as_user, sys.executable, "-c", "import optimlab; print(optimlab.__file__)"],
                               capture_output=True, text=True, env=environment, timeout=60, check=False)
        assert probe.stdout.startswith(str(root)), probe.stdout + probe.stderr
        result = subprocess.run([*as_user, sys.executable, "-c", ALL_COUNTING, backend_name], capture_output=True,
                                text=True, env=environment, timeout=600, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
    finally:
        _make_writable(root)
        shutil.rmtree(root)


def test_nadam_params_at_different_steps_advance_their_own_mu_product(backend):
    """Params of one group that joined at different steps (a gradient missing on some steps) keep their own
    `mu_product`, advanced in float32 as torch.optim.NAdam does. `mu_product` is advanced for all params of a
    step count at once (stacked); each must still get its own value and its own bucket of coefficients."""
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(n)) for n in (3, 1, 5, 2)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    optimizer = optimlab.torch.NAdam(ours, lr=0.05, weight_decay=0.01, backend=backend)
    reference = torch.optim.NAdam(theirs, lr=0.05, weight_decay=0.01, foreach=False)
    for step in range(6):
        for i, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
            grad = torch.randn(mine.shape) if step >= i else None  # param i first gets a gradient at step i
            mine.grad = grad
            other.grad = None if grad is None else grad.clone()
        optimizer.step()
        reference.step()
    for mine, other in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, other, rtol=1e-6, atol=1e-7)
        assert optimizer.state[mine]["mu_product"].dtype == torch.float32
        assert optimizer.state[mine]["mu_product"].item() == reference.state[other]["mu_product"].item()
