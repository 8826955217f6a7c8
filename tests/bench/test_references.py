"""What `optimlab bench` races: a case per registered optimizer, each against a reference that does the same math."""

import pytest
import torch

import optimlab.torch as optimlab_torch
from optimlab.bench import CASES, CONFIGURATIONS, reference_optimizer
from optimlab.bench.references import REFERENCES, VARIANTS, ForeachLAMB, in_train_mode
from optimlab.rules import REGISTRY


def test_every_registered_optimizer_is_a_case_under_its_own_name():
    assert [name for name in CASES if name in REGISTRY] == list(REGISTRY)
    assert {case.optimizer for case in CASES.values()} == set(REGISTRY)
    assert set(CASES) == set(REGISTRY) | {name for name, *_ in CONFIGURATIONS}


def test_every_registered_optimizer_has_a_reference_and_every_reference_an_optimizer():
    assert set(REFERENCES) == set(REGISTRY)  # lion-pytorch is a dev dependency: Lion's reference is here
    assert all(CASES[name].reference is REFERENCES[name] for name in REGISTRY)


def _params(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 2)]
    params = [torch.randn(shape, generator=generator, dtype=dtype).requires_grad_() for shape in shapes]
    with torch.no_grad():
        params[2].zero_()  # a tensor of norm 0: LAMB's trust ratio is 1 there
    return params, generator


def _steps(optimizer, params, generator, steps=3):
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        optimizer.step()
    return [param.detach().clone() for param in params]


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.state_dtype is None])
def test_each_reference_variant_takes_the_drop_in_class_s_steps(name):
    """The race compares like with like: same arguments, same math (float64, eager backend, 3 steps)."""
    case = CASES[name]
    params, generator = _params()
    expected = _steps(in_train_mode(optimlab_torch.create(case.optimizer, params, **case.arguments, backend="eager")),
                      params, generator)
    variants = 0
    for variant in VARIANTS:
        params, generator = _params()
        optimizer = reference_optimizer(case, params, variant)
        if optimizer is None:
            continue
        variants += 1
        for got, want in zip(_steps(optimizer, params, generator), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=f"{name} {variant}")
    assert variants >= 1


def test_foreach_lamb_decays_weights_and_takes_the_trust_ratio_per_tensor():
    params, generator = _params()
    ours = [param.detach().clone().requires_grad_() for param in params]
    reference = _steps(ForeachLAMB(params, lr=0.1, weight_decay=0.1), params, generator, steps=4)
    _, generator = _params()
    expected = _steps(optimlab_torch.LAMB(ours, lr=0.1, weight_decay=0.1, backend="eager"), ours, generator,
                      steps=4)
    for got, want in zip(reference, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert not torch.equal(reference[2], torch.zeros(2, 2))  # the zero tensor moved (ratio 1, not 0/0)
