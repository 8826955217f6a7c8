"""The Rule contract (rules/base.py): checked on construction, identity-hashable, helpers found from the code."""

import math

import numpy as np
import pytest
import torch

from optimlab.lab import sweep
from optimlab.rules import RULES, Rule, primitives
from optimlab.rules.adafactor import FACTORED
from optimlab.rules.base import any_nonzero
from optimlab.rules.primitives import abs, sign, where  # noqa: A004


def _update(param, grad, exp_avg, lr, maximize):
    if maximize:
        grad = -grad
    exp_avg = exp_avg * 0.5 + grad
    return param - lr * exp_avg, exp_avg


def _rule(**changes):
    fields = {"name": "toy", "update": _update,
              "coefficients": lambda step, *, lr, maximize: {"lr": lr, "maximize": maximize},
              "hyperparameters": {"lr": 0.1, "maximize": False}, "state_names": ("exp_avg",),
              "active_state": lambda hyper: ("exp_avg",), "validate": lambda hyper: None,
              "trace": lambda step, grad, state, hyper: {}, "flags": ("maximize",)}
    return Rule(**{**fields, **changes})


def test_a_rule_that_keeps_the_contract_constructs():
    rule = _rule()
    assert rule.coefficient_names == ("lr", "maximize")


@pytest.mark.parametrize(("changes", "message"), [
    ({"state_names": ("momentum_buffer",)}, r"state \('momentum_buffer',\)"),
    ({"update": lambda grad, param, exp_avg, lr, maximize: (param, exp_avg)}, r"\(param, grad\)"),
    ({"coefficients": lambda step, *, lr, maximize: {"lr": lr}}, "coefficients returns"),
    ({"flags": ()}, "'maximize' is a bool: declare it in flags"),
    ({"flags": ("maximize", "amsgrad")}, r"flags \['amsgrad'\] are not coefficients"),
    ({"coefficients": lambda step, *, lr, maximize: {"lr": lr, "maximize": 0}}, "'maximize' must be a Python bool"),
    ({"name": "_ol_toy"}, "start with '_ol_'"),
    ({"name": "my-rule"}, "must be a Python identifier"),
    ({"active_state": lambda hyper: ("exp_avg_sq",)}, "active_state names"),
    ({"group_reductions": ("grad_norm_sq",)}, r"group_reductions \('grad_norm_sq',\) must be a tuple of distinct "
     r"names among the reductions \(\)"),
    ({"validate": lambda hyper: (_ for _ in ()).throw(ValueError("Invalid lr: 0.1"))},
     "default hyperparameters are invalid"),
    ({"group_state": ("k",)}, "group_state and group_update come together"),
    ({"group_state": ("lr",), "group_update": lambda group, hyper: {"lr": 1.0}}, r"group state \['lr'\] shares"),
    ({"group_state": ("k",), "group_update": lambda group, hyper: {"count": 1}}, "group_update returns"),
    ({"state_from_param": ("z",)}, r"state_from_param names \['z'\]"),
])
def test_a_rule_that_breaks_the_contract_is_refused_with_the_reason(changes, message):
    with pytest.raises(ValueError, match=message):
        _rule(**changes)


def test_rules_hash_by_identity_so_caches_keep_them_alive():
    first, second = _rule(), _rule()
    cache = {first: 1, second: 2}
    assert first != second and cache[first] == 1 and cache[second] == 2
    assert {RULES["adam"]: "adam"}[RULES["adam"]] == "adam"


def _halve(x):
    return x * 0.5


def _clipped(x):
    """A helper calling another helper and the natives: both are found and compiled with the rule."""
    return where(abs(x) > 1, sign(x), _halve(x) * 2)


def _helper_update(param, grad, lr):
    return (param - lr * _clipped(grad),)


def test_a_rules_own_helpers_are_found_from_its_code_recursively():
    rule = Rule(name="clipped", update=_helper_update, coefficients=lambda step, *, lr: {"lr": lr},
                hyperparameters={"lr": 0.5}, state_names=(), active_state=lambda hyper: (),
                validate=lambda hyper: None, trace=lambda *arguments: {})
    assert rule.helpers == {"_clipped": _clipped, "_halve": _halve}
    calls = []

    def counting_sign(x):
        calls.append(x)
        return primitives.sign(x)

    natives = {**{name: getattr(primitives, name) for name in primitives.NATIVE}, "sign": counting_sign}
    specialized = rule.specialize(natives)
    assert specialized(1.0, 3.0, 0.5) == (0.5,) and specialized(1.0, 0.5, 0.5) == (0.75,)
    assert calls == [3.0, 0.5]  # the helper's `sign` is the backend's native, not a global of this module


def test_rmsprop_momentum_is_a_derived_flag():
    rule = RULES["rmsprop"]
    assert rule.coefficients(1, **rule.defaults())["use_momentum"] is False
    assert rule.coefficients(1, **rule.defaults(momentum=0.5))["use_momentum"] is True
    assert any_nonzero(np.array([0.0, 0.3])) and not any_nonzero(torch.zeros(()))


@pytest.mark.parametrize(("optimizer", "name", "values"), [("rmsprop", "momentum", [0.0, 0.5, 0.9]),
                                                           ("sgd", "weight_decay", [0.0, 0.1]),
                                                           ("adam", "weight_decay", [0.1, 0.0]),
                                                           ("nadam", "weight_decay", [0.0, 0.3])])
def test_a_lab_sweep_over_a_value_a_flag_derives_from_matches_each_run_alone(optimizer, name, values):
    """The branch is taken for the whole sweep; its zero on that path (b = g / avg, g + 0 θ) is exactly the
    plain run's."""
    swept = sweep("ellipse", optimizer, {"lr": 0.05, name: values}, steps=20)
    for index, value in enumerate(values):
        alone = sweep("ellipse", optimizer, {"lr": 0.05, name: value}, steps=20)
        np.testing.assert_array_equal(swept.path[:, index], alone.path[:, 0])


@pytest.mark.parametrize("name", primitives.NATIVE + tuple(primitives.FORMULAS))
def test_each_native_means_the_same_on_python_numpy_and_torch(name):
    values = [-2.0, -0.0, 0.0, 0.25, 3.0, math.inf, math.nan]
    other = [1.0, 0.0, -0.0, 0.75, math.nan, 2.0, 0.5]
    function = getattr(primitives, name) if name in primitives.NATIVE else primitives.lerp
    arity = {"sqrt": 1, "sign": 1, "abs": 1, "where": 3, "lerp": 3}.get(name, 2)
    if arity == 1:
        arguments = [values]
    elif arity == 2:
        arguments = [values, other]
    elif name == "where":
        arguments = [[value > 0 for value in values], values, other]
    else:
        arguments = [values, other, [0.1, 0.9, 0.5, 0.4, 0.6, 1.0, 0.0]]
    torch_args = [torch.tensor(argument, dtype=None if isinstance(argument[0], bool) else torch.float64)
                  for argument in arguments]
    with np.errstate(invalid="ignore"):
        as_numpy = function(*(np.array(argument) for argument in arguments))
        as_python = [function(*element) for element in zip(*arguments, strict=True)]
    as_torch = function(*torch_args).numpy()
    np.testing.assert_array_equal(np.asarray(as_numpy), as_torch)
    np.testing.assert_array_equal(np.asarray(as_python, dtype=np.float64), as_torch)


# --- stage (b): row and column reductions ---------------------------------------------------------------------

def _axis_update(param, grad, lr, row_scale, column_scale):
    return (param - lr * grad * row_scale * column_scale,)


def _axis_reduce(param, grad, lr):
    return grad * grad, abs(grad)


def _axis_finish(row_sq, column_abs, lr):
    return {"row_scale": 1 / (1 + row_sq), "column_scale": 1 / (1 + column_abs)}


def _axis_rule(**changes):
    fields = {"name": "factored_toy", "update": _axis_update, "coefficients": lambda step, *, lr: {"lr": lr},
              "hyperparameters": {"lr": 0.1}, "state_names": (), "active_state": lambda hyper: (),
              "validate": lambda hyper: None, "trace": lambda *arguments: {}, "row_reductions": ("row_sq",),
              "column_reductions": ("column_abs",), "axis_reduce": _axis_reduce, "axis_finish": _axis_finish,
              "row_coefficients": ("row_scale",), "column_coefficients": ("column_scale",)}
    return Rule(**{**fields, **changes})


def test_a_rule_with_row_and_column_reductions_that_keeps_the_contract_constructs_and_steps():
    rule = _axis_rule()
    assert rule.coefficient_names == ("lr",) and rule.axis_values == ("row_scale", "column_scale")
    grad = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    param, _ = rule.step(np.zeros((2, 3)), grad, {}, 1, rule.defaults())
    row_scale = 1 / (1 + (grad * grad).sum(axis=-1, keepdims=True))
    column_scale = 1 / (1 + np.abs(grad).sum(axis=-2, keepdims=True))
    np.testing.assert_allclose(param, -0.1 * grad * row_scale * column_scale)


@pytest.mark.parametrize(("changes", "message"), [
    ({"axis_finish": None}, "row_reductions/column_reductions, axis_reduce and axis_finish come together"),
    ({"row_reductions": (), "column_reductions": ()}, "come together"),
    ({"axis_reduce": lambda param, grad: (grad, grad)},
     r"axis_reduce takes update's parameters before the per-row and per-column values \('param', 'grad', 'lr'\)"),
    ({"axis_finish": lambda column_abs, row_sq, lr: {}}, r"axis_finish takes \(\*row_state, \*column_state, "
     r"\*row_reductions, \*column_reductions, \*coefficients\) \('row_sq', 'column_abs', 'lr'\)"),
    ({"axis_finish": lambda row_sq, column_abs, lr: {"row_scale": row_sq}},
     r"axis_finish returns \['row_scale'\], the per-row and per-column state and values are"),
    ({"column_coefficients": ()}, "update's parameters before the per-tensor coefficients must be the per-row and "
     r"per-column values \('row_scale',\)"),
    ({"row_coefficients": ("column_scale",), "column_coefficients": ("row_scale",)},
     "must be the per-row and per-column values"),
    ({"row_state": ("row_var",)}, r"per-row and per-column values \('row_var', 'row_scale', 'column_scale'\)"),
    ({"active_state": lambda hyper: ("row_var",)}, "active_state names"),
    ({"row_reductions": ("lr",)}, r"names \['lr'\] are used twice"),
])
def test_a_rule_that_breaks_the_row_and_column_contract_is_refused_with_the_reason(changes, message):
    with pytest.raises(ValueError, match=message):
        _axis_rule(**changes)


def test_per_row_values_without_row_or_column_reductions_are_refused():
    with pytest.raises(ValueError, match="need row or column reductions to compute them"):
        _axis_rule(row_reductions=(), column_reductions=(), axis_reduce=None, axis_finish=None)


def test_a_rule_choosing_by_shape_cannot_have_group_reductions_and_refuses_a_vector_for_its_factored_rule():
    factored = _axis_rule()
    with pytest.raises(ValueError, match="for_shape.*cannot have group reductions"):
        Rule(name="grouped", update=lambda param, grad, lr, total: (param,),
             coefficients=lambda step, *, lr: {"lr": lr}, hyperparameters={"lr": 0.1}, state_names=(),
             active_state=lambda hyper: (), validate=lambda hyper: None, trace=lambda *arguments: {},
             reductions=("total_sq",), reduce=lambda param, grad, lr: (grad * grad,),
             finish=lambda total_sq: {"total": total_sq}, tensor_coefficients=("total",),
             group_reductions=("total_sq",), for_shape=lambda shape: factored)
    chooser = _rule(for_shape=lambda shape: factored)
    assert chooser.rule_for_shape((2, 3)) is factored
    with pytest.raises(ValueError, match=r"keeps state per row and column, which a param of shape \(3,\)"):
        _rule(for_shape=lambda shape: FACTORED).rule_for_shape((3,))


def test_group_state_reaches_coefficients_once_per_group_and_step():
    """A rule outside the package with group state: a counter every param's coefficients see, advanced once."""
    def update(param, grad, lr, count):
        return (param - lr * count * grad,)

    rule = Rule(name="counted", update=update,
                coefficients=lambda step, *, lr, count: {"lr": lr, "count": count},
                hyperparameters={"lr": 0.1}, state_names=(), active_state=lambda hyper: (),
                validate=lambda hyper: None, trace=lambda *arguments: {}, initial_state=lambda name, hyper: 0,
                group_state=("count",), group_update=lambda group, hyper: {"count": group["count"] + 1})
    hyper, group = rule.defaults(), {"count": 0}
    for _ in range(2):
        results = rule.step_group([np.ones(2), np.ones(1)], [np.ones(2), np.ones(1)], [{}, {}], [1, 1], hyper,
                                  group_state=group)
        group = {"count": results[0][1]["count"]}
    assert group == {"count": 2}
    np.testing.assert_allclose(results[1][0], 1 - 0.1 * 2)
