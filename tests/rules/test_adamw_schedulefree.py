"""Schedule-Free AdamW (rules/adamw_schedulefree.py) against the reference's step written out in float64
(`schedulefree_reference`), on `Rule.step`, `Rule.step_group`, `optimlab.numpy` and the lab's batched sweep."""

import numpy as np
import pytest
from tests.rules import schedulefree_reference as reference

import optimlab.numpy as onp
from optimlab.lab.sweep import descend
from optimlab.rules import RULES

RULE = RULES["adamw_schedulefree"]
STEPS = 30
CONFIGS = reference.CONFIGS


def gradients(seed, shapes, steps=STEPS):
    generator = np.random.default_rng(seed)
    return [[generator.normal(size=shape) for shape in shapes] for _ in range(steps)]


def run_reference(config, params, grads):
    group, states = reference.new_group(**config), [{} for _ in params]
    params = [param.copy() for param in params]
    for step_grads in grads:
        reference.step(group, params, step_grads, states)
    return group, params, states


@pytest.mark.parametrize("name", CONFIGS)
def test_step_group_equals_the_reference(name):
    shapes = [(5,), (2, 3)]
    start = [np.linspace(-1, 1, 5), np.arange(6.0).reshape(2, 3) / 7]
    grads = gradients(0, shapes)
    group, expected, expected_states = run_reference(CONFIGS[name], start, grads)
    hyper = RULE.defaults(**CONFIGS[name])
    active = RULE.active_state(hyper)
    params = [param.copy() for param in start]
    states = [{name: RULE.initial_tensor(name, param, hyper) for name in active} for param in params]
    group_state = RULE.initial_group_state(hyper)
    for t, step_grads in enumerate(grads, 1):
        results = RULE.step_group(params, step_grads, states, [t] * len(params), hyper, group_state=group_state)
        params = [new_param for new_param, _ in results]
        states = [{name: new_state[name] for name in active} for _, new_state in results]
        group_state = {name: results[0][1][name] for name in RULE.group_state}
    for param, state, want, want_state in zip(params, states, expected, expected_states, strict=True):
        np.testing.assert_allclose(param, want, rtol=1e-12, atol=1e-15)
        for key in want_state:
            np.testing.assert_allclose(state[key], want_state[key], rtol=1e-12, atol=1e-15)
    assert group_state == {name: group[name] for name in RULE.group_state}


def test_the_group_state_advances_once_per_step_not_once_per_param():
    hyper = RULE.defaults()
    params = [np.ones(2), np.ones(3), np.ones(1)]
    results = RULE.step_group(params, [np.ones_like(p) for p in params],
                              [{"z": p.copy(), "exp_avg_sq": np.zeros_like(p)} for p in params], [1, 1, 1], hyper,
                              group_state=RULE.initial_group_state(hyper))
    assert [new_state["k"] for _, new_state in results] == [1, 1, 1]


def test_step_group_refuses_a_missing_group_state():
    hyper = RULE.defaults()
    with pytest.raises(ValueError, match="group state"):
        RULE.step_group([np.ones(1)], [np.ones(1)], [{"z": np.ones(1), "exp_avg_sq": np.zeros(1)}], [1], hyper)


def test_step_refuses_a_state_without_the_group_state():
    with pytest.raises(ValueError, match=r"group state \['k', 'weight_sum', 'lr_max', 'scheduled_lr'\]"):
        RULE.step(np.ones(1), np.ones(1), {"z": np.ones(1), "exp_avg_sq": np.zeros(1)}, 1, RULE.defaults())


def test_lr_zero_takes_the_reference_zero_division_branch():
    """W_k = 0 (lr 0, weight γ_max^2 = 0): c = 0, and nothing moves."""
    group, expected, _ = run_reference({"lr": 0.0}, [np.array([1.0, -2.0])], gradients(1, [(2,)], 3))
    optimizer = onp.AdamWScheduleFree(lr=0.0)
    param = np.array([1.0, -2.0])
    for (grad,) in gradients(1, [(2,)], 3):
        optimizer.update([param], [grad])
    np.testing.assert_array_equal(param, expected[0])
    assert optimizer.group_state["weight_sum"] == group["weight_sum"] == 0.0


@pytest.mark.parametrize("name", CONFIGS)
def test_numpy_optimizer_equals_the_reference(name):
    start = {"W": np.linspace(-1, 1, 4).reshape(2, 2), "b": np.array([0.5, -0.5])}
    grads = gradients(2, [(2, 2), (2,)])
    group, expected, expected_states = run_reference(CONFIGS[name], list(start.values()), grads)
    optimizer = onp.AdamWScheduleFree(**CONFIGS[name])
    params = {key: value.copy() for key, value in start.items()}
    for step_grads in grads:
        optimizer.update(params, dict(zip(params, step_grads, strict=True)))
    for key, want, want_state in zip(params, expected, expected_states, strict=True):
        np.testing.assert_allclose(params[key], want, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(optimizer.state[key]["z"], want_state["z"], rtol=1e-12, atol=1e-15)
    assert optimizer.group_state == {name: group[name] for name in RULE.group_state}


def test_lab_sweep_over_lr_equals_one_reference_per_config():
    """Each config of a batched sweep is its own group: its own W, γ_max and c (arrays in the group state)."""
    lrs = np.array([0.0, 0.01, 0.2])
    start = np.array([1.0, -0.5])
    grad_fn = lambda t, points: 2 * points + np.sin(t)  # noqa: E731
    batch = descend("adamw_schedulefree", {"lr": lrs, "warmup_steps": 4, "r": 0.5}, start, grad_fn, STEPS)
    for index, lr in enumerate(lrs):
        group, states, point = reference.new_group(lr=float(lr), warmup_steps=4, r=0.5), [{}], [start.copy()]
        for t in range(1, STEPS + 1):
            reference.step(group, point, [grad_fn(t, point[0])], states)
        np.testing.assert_allclose(batch.path[-1, index], point[0], rtol=1e-12, atol=1e-15)


def test_a_whole_warmup_count_given_as_a_float_is_the_count():
    """JSON (the playground's API) sends 3 as 3.0: the same steps as 3."""
    grads = gradients(3, [(2,)], 6)
    results = []
    for warmup_steps in (3, 3.0):
        optimizer, param = onp.AdamWScheduleFree(lr=0.1, warmup_steps=warmup_steps), np.array([1.0, -1.0])
        for (grad,) in grads:
            optimizer.update([param], [grad])
        results.append(param)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("bad, message", [({"warmup_steps": -1}, "warmup_steps"),
                                          ({"warmup_steps": 1.5}, "warmup_steps"),
                                          ({"r": -1.0}, "r"), ({"inner_momentum": 1.0}, "inner_momentum"),
                                          ({"weight_lr_power": float("nan")}, "weight_lr_power")])
def test_invalid_hyperparameters_are_refused_by_name(bad, message):
    with pytest.raises(ValueError, match=f"Invalid {message}"):
        RULE.defaults(**bad)


def test_group_state_powers_are_python_floats_bits_for_any_array_shape():
    """The lab's per-config arrays take the same power as a Python float, whatever their shapes (NumPy's
    vectorized `power` gives 0.1 ** 2.0 = 0.01 for a (1, 1) array on AVX-512 builds, not 0.010000000000000002)."""
    import numpy as np

    from optimlab.rules.adamw_schedulefree import _power

    bases = np.geomspace(1e-3, 1.0, 7)
    for shape in ((1, 1), (7, 1)):
        column = np.broadcast_to(bases[: shape[0]].reshape(-1, 1), shape)
        for exponent in (2.0, 0.5, 3.0, np.array([[2.0]])):
            expected = [float(b) ** float(np.asarray(exponent).item()) for b in column.ravel()]
            assert _power(column, exponent).ravel().tolist() == expected
    assert _power(0.1, 2.0) == 0.1 ** 2.0 and _power(3, 0.0) == 1.0
