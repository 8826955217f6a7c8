"""Each rule is one function that evaluates on NumPy float64 arrays, torch float64 tensors and Python floats."""

import inspect
import math

import numpy as np
import pytest
import torch

from optimlab.rules import OPTIMIZERS, RULES, primitives

CONFIGS = {
    "sgd": {"lr": 0.1, "weight_decay": 0.01},
    "momentum": {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01},
    "nesterov": {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.01},
    "adagrad": {"lr": 0.3, "lr_decay": 0.01, "eps_root": 1e-8, "initial_accumulator_value": 0.1},
    "rmsprop": {"lr": 0.01, "alpha": 0.9, "centered": True, "momentum": 0.5, "eps_root": 1e-8},
    "adam": {"lr": 0.1, "amsgrad": True, "eps_root": 1e-8, "weight_decay": 0.01},
    "adamw": {"lr": 0.1, "weight_decay": 0.1, "betas": (0.4, 0.9)},
    "lion": {"lr": 0.1, "weight_decay": 0.1, "betas": (0.8, 0.95)},
    "nadam": {"lr": 0.1, "weight_decay": 0.1, "momentum_decay": 0.01},
    "adamw_schedulefree": {"lr": 0.1, "weight_decay": 0.1, "warmup_steps": 3, "r": 0.5, "inner_momentum": 0.5},
}


def _run(name, values, convert):
    rule, overrides = OPTIMIZERS[name]
    hyper = rule.defaults(**{**overrides, **CONFIGS[name]})
    params = [convert(value) for value in values[0]]
    states = [{**{state: convert(value if state in rule.state_from_param else rule.initial_state(state, hyper))
                  for state in (*rule.active_state(hyper), *rule.scalar_state)},
               **rule.initial_group_state(hyper)}  # each param its own group (`Rule.step`)
              for value in values[0]]
    for t, grads in enumerate(values[1:], start=1):
        for index, grad in enumerate(grads):
            params[index], states[index] = rule.step(params[index], convert(grad), states[index], t, hyper)
    return [float(param) for param in params]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_numbers_on_numpy_torch_and_python(name):
    rng = np.random.default_rng(4)
    values = rng.normal(size=(16, 3)).tolist()  # row 0: params; rows 1..: gradients
    as_python = _run(name, values, float)
    as_numpy = _run(name, values, lambda value: np.array(value, dtype=np.float64))
    as_torch = _run(name, values, lambda value: torch.tensor(value, dtype=torch.float64))
    # Identical formulas; torch's vectorized lerp may fuse a multiply-add, hence 1e-14 rather than bit equality.
    np.testing.assert_allclose(as_numpy, as_python, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(as_torch, as_python, rtol=1e-14, atol=1e-15)
    assert all(math.isfinite(value) for value in as_python)


@pytest.mark.parametrize("rule", RULES.values(), ids=list(RULES))
def test_update_signature_names_state_then_coefficients(rule):
    parameters = list(inspect.signature(rule.update).parameters)
    assert parameters[:2] == ["param", "grad"]
    assert tuple(parameters[2:2 + len(rule.state_names)]) == rule.state_names
    hyper = rule.defaults()
    coefficients = rule.coefficients_at(1, hyper)
    assert set(rule.coefficient_names) == set(coefficients)


@pytest.mark.parametrize("rule", RULES.values(), ids=list(RULES))
def test_specialize_runs_the_rules_own_code(rule):
    """A backend's copy is the rule's code object with other natives bound: no second copy of the math."""
    calls = []

    def counting_sqrt(x):
        calls.append(x)
        return math.sqrt(x)

    native = {**{name: getattr(primitives, name) for name in primitives.NATIVE}, "sqrt": counting_sqrt}
    specialized = rule.specialize(native)
    assert specialized.__code__ is rule.update.__code__
    hyper = rule.defaults()
    coefficients = rule.coefficients_at(1, hyper)
    per_tensor = rule.finish(*(1.0 for _ in rule.reductions)) if rule.reductions else {}
    arguments = [1.0, 0.5] + [rule.initial_state(name, hyper) for name in rule.state_names] \
        + [coefficients[name] for name in rule.coefficient_names] \
        + [per_tensor[name] for name in rule.tensor_coefficients]
    assert specialized(*arguments) == rule.update(*arguments)
    rooted = ("adagrad", "rmsprop", "adam", "nadam", "lamb", "adamw_schedulefree")  # the rules with a root
    assert bool(calls) == (rule.name in rooted)


def test_specialize_requires_every_native():
    with pytest.raises(ValueError, match="natives"):
        RULES["adam"].specialize({"sqrt": math.sqrt})
