"""optimlab's LAMB against an independent float64 reference written here from the paper (You et al. 2020, Alg. 2,
in optax's formulation), on NumPy, the lab and every backend."""

import math

import numpy as np
import pytest
import torch

import optimlab.numpy
import optimlab.torch
from optimlab.lab import sweep
from optimlab.lab.surfaces import SURFACES
from optimlab.rules import REGISTRY

SETTINGS = [pytest.param({"lr": 0.01}, id="default"),
            pytest.param({"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-4, "weight_decay": 0.1}, id="weight_decay")]


def reference(params, gradients, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, trust_ratios=None):
    """Algorithm 2, element by element in Python floats: each tensor is a list of numbers. `trust_ratios`, where
    given, receives each step's trust ratio of each tensor."""
    beta1, beta2 = betas
    params = [list(map(float, param)) for param in params]
    exp_avgs = [[0.0] * len(param) for param in params]
    exp_avg_sqs = [[0.0] * len(param) for param in params]
    for t, grads in enumerate(gradients, start=1):
        for theta, grad, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
            u = []
            for i, g in enumerate(map(float, grad)):
                m[i] = beta1 * m[i] + (1 - beta1) * g
                v[i] = beta2 * v[i] + (1 - beta2) * g * g
                m_hat, v_hat = m[i] / (1 - beta1 ** t), v[i] / (1 - beta2 ** t)
                u.append(m_hat / (math.sqrt(v_hat) + eps) + weight_decay * theta[i])
            param_norm = math.sqrt(sum(x * x for x in theta))
            update_norm = math.sqrt(sum(x * x for x in u))
            trust = param_norm / update_norm if param_norm > 0 and update_norm > 0 else 1.0
            if trust_ratios is not None:
                trust_ratios.append(trust)
            for i in range(len(theta)):
                theta[i] -= lr * trust * u[i]
    return params


def _problem(steps=20, seed=0):
    """Four tensors: two random, one all zeros (‖θ‖ = 0), one whose gradient is always 0 (‖u‖ = 0)."""
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=7), rng.normal(size=(3, 4)).ravel(), np.zeros(5), rng.normal(size=2)]
    gradients = [[rng.normal(size=param.size) if index != 3 else np.zeros(param.size)
                  for index, param in enumerate(params)] for _ in range(steps)]
    return params, gradients


@pytest.mark.parametrize("settings", SETTINGS)
def test_numpy_matches_the_paper(settings):
    params, gradients = _problem()
    expected = reference(params, gradients, **settings)
    optimizer = optimlab.numpy.LAMB(**settings)
    arrays = [param.copy() for param in params]
    for grads in gradients:
        optimizer.update(arrays, grads)
    for actual, want in zip(arrays, expected, strict=True):
        np.testing.assert_allclose(actual, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("settings", SETTINGS)
def test_torch_matches_the_paper_on_every_backend(backend, dtype, settings):
    params, gradients = _problem()
    expected = reference(params, gradients, **settings)
    tensors = [torch.nn.Parameter(torch.tensor(param, dtype=dtype)) for param in params]
    optimizer = optimlab.torch.LAMB(tensors, backend=backend, **settings)
    for grads in gradients:
        for tensor, grad in zip(tensors, grads, strict=True):
            tensor.grad = torch.tensor(grad, dtype=dtype)
        optimizer.step()
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    for actual, want in zip(tensors, expected, strict=True):
        torch.testing.assert_close(actual.detach().double(), torch.tensor(want, dtype=torch.float64), rtol=rtol,
                                   atol=rtol)
    assert set(optimizer.state[tensors[0]]) == {"step", "exp_avg", "exp_avg_sq"}


def test_a_lab_sweep_takes_each_configuration_as_its_own_tensor():
    lrs = [0.01, 0.1, 0.3]
    swept = sweep("ellipse", "lamb", {"lr": lrs}, steps=15)
    start = swept.path[0, 0]
    for index, lr in enumerate(lrs):
        (expected,) = reference([start], [[SURFACES["ellipse"].gradient(point)] for point in swept.path[:-1, index]],
                                lr)
        np.testing.assert_allclose(swept.path[-1, index], expected, rtol=1e-12)


@pytest.mark.parametrize(("surface", "start"), [("ellipse", None), ("rosenbrock", (0.0, 0.0))],
                         ids=["ellipse", "rosenbrock_from_the_origin"])
@pytest.mark.parametrize("settings", SETTINGS)
def test_the_trace_shows_each_steps_trust_ratio(settings, surface, start):
    """`optimlab trace lamb`, the lab and the playground show r_t, the paper's ‖θ_{t−1}‖ / ‖u_t‖ of each step,
    per configuration of a sweep; from the origin of Rosenbrock's (∇f = (−2, 0) there) the first step has
    ‖θ‖ = 0 and ‖u‖ > 0, so r_1 = 1, and every later step a ratio of its own."""
    lrs = [settings["lr"], 3 * settings["lr"]]
    swept = sweep(surface, "lamb", {**settings, "lr": lrs}, start=start, steps=12, record_trace=True)
    gradient = SURFACES[surface].gradient
    for index, lr in enumerate(lrs):
        ratios = []
        reference([swept.path[0, index]], [[gradient(point)] for point in swept.path[:-1, index]],
                  **{**settings, "lr": lr}, trust_ratios=ratios)
        np.testing.assert_allclose(swept.trace["trust_ratio"][:, index, 0], ratios, rtol=1e-12)
        np.testing.assert_array_equal(swept.trace["trust_ratio"][:, index, 0], swept.trace["trust_ratio"][:, index, 1])
        assert len(set(ratios[1:])) == len(ratios) - 1  # a ratio of each step, not one value throughout
    if start == (0.0, 0.0):
        assert swept.trace["trust_ratio"][0, :, 0].tolist() == [1.0, 1.0]
    assert "trust_ratio" in REGISTRY["lamb"].trace_scalars


def test_signature_and_defaults():
    optimizer = optimlab.torch.LAMB([torch.nn.Parameter(torch.ones(2))])
    assert {key: optimizer.defaults[key] for key in ("lr", "betas", "eps", "weight_decay")} == \
        {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0}


def test_a_tensor_big_enough_to_be_shared_between_threads(backend):
    """Several Numba chunks in parallel pieces (and Triton programs): the sums still add up per tensor."""
    generator = torch.Generator().manual_seed(5)
    params = [torch.nn.Parameter(torch.randn(size, generator=generator, dtype=torch.float64)) for size in (70_000, 3)]
    twins = [torch.nn.Parameter(param.detach().clone()) for param in params]
    ours = optimlab.torch.LAMB(params, lr=0.01, weight_decay=0.1, backend=backend)
    eager = optimlab.torch.LAMB(twins, lr=0.01, weight_decay=0.1, backend="eager")
    for _ in range(2):
        for param, twin in zip(params, twins, strict=True):
            param.grad = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            twin.grad = param.grad.clone()
        ours.step()
        eager.step()
    for param, twin in zip(params, twins, strict=True):
        torch.testing.assert_close(param.detach(), twin.detach(), rtol=1e-12, atol=1e-14)
