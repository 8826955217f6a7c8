"""The kernel plan both compiled backends derive their kernels from (`optimlab.kernels.plan`)."""

import numpy as np
import pytest

from optimlab.kernels.plan import ChunkTable, KernelPlan, Slots, elements, pointer, split_by, term, total, value
from optimlab.rules import RULES
from optimlab.rules.base import RESERVED_PREFIX


def test_the_chunk_table_cuts_every_tensor_into_full_chunks_but_its_last():
    table = ChunkTable.build([5, 0, 4, 1], chunk=2)
    assert table.chunk_tensor.tolist() == [0, 0, 0, 2, 2, 3]  # the empty tensor has no chunk
    assert table.chunk_index.tolist() == [0, 1, 2, 0, 1, 0]
    assert table.chunk_start.tolist() == [0, 2, 4, 0, 2, 0]
    assert table.chunk_stop.tolist() == [2, 4, 5, 2, 4, 1]
    assert table.chunk_sizes.tolist() == [2, 2, 1, 2, 2, 1]
    assert table.full().tolist() == [True, True, False, True, True, False]
    assert table.full(rows=4).tolist() == [False, False]  # the last run is padded with empty chunks
    assert table.full(rows=2).tolist() == [True, False, False]


def test_an_empty_group_has_no_chunk():
    table = ChunkTable.build([0, 0], chunk=8)
    assert len(table.chunk_tensor) == 0 and table.full().tolist() == []


def test_splits_keep_the_order_of_first_appearance_and_say_when_one_is_everything():
    assert split_by(["a", "b", "a", "c"]) == [("a", [0, 2]), ("b", [1]), ("c", [3])]
    assert split_by([("float32", "float32")] * 3) == [(("float32", "float32"), None)]


def test_inactive_slots_get_a_dummy_and_drop_their_result():
    rule = RULES["adam"]
    slots = Slots.of(rule, (True, False, True))
    assert slots.active == ("exp_avg", "max_exp_avg_sq")
    assert slots.used == (True, False, True)
    assert slots.index("max_exp_avg_sq") == 2
    assert slots.arguments(str.upper, "0") == ["EXP_AVG", "0", "MAX_EXP_AVG_SQ"]
    assert slots.results(str.upper) == ["EXP_AVG", "_", "MAX_EXP_AVG_SQ"]


def test_flags_are_the_declared_ones_and_every_other_coefficient_is_a_runtime_scalar():
    rule = RULES["adam"]
    plan = KernelPlan.of(rule, rule.active_state(rule.defaults()))
    assert plan.flags == rule.flags
    assert set(plan.scalars) | set(plan.flags) == set(rule.coefficient_names)
    assert not set(plan.scalars) & set(plan.flags)
    assert list(plan.scalars) == [name for name in rule.coefficient_names if name in plan.scalars]  # update's order
    arguments = plan.coefficient_arguments(lambda name: f"flag:{name}", lambda name: f"scalar:{name}")
    assert [argument.split(":")[1] for argument in arguments] == list(rule.coefficient_names)
    assert {argument for argument in arguments if argument.startswith("flag:")} == {f"flag:{f}" for f in rule.flags}
    coefficients = rule.coefficients(1, **rule.defaults(amsgrad=True))
    assert dict(plan.flag_values(coefficients))["amsgrad"] is True


def test_finish_gives_one_column_per_tensor_coefficient():
    rule = RULES["lamb"]
    plan = KernelPlan.of(rule, rule.state_names)
    sums = np.array([[4.0, 1.0], [0.0, 9.0]])  # (param_norm_sq, update_norm_sq) per tensor
    (trust_ratio,) = plan.finish(sums, np.asarray)
    assert trust_ratio.tolist() == pytest.approx([2.0, 1.0])  # ‖θ‖/‖u‖, and 1 where a norm is 0


def test_every_generated_name_is_behind_the_reserved_prefix():
    names = [value("numel"), pointer("numel"), elements("numel"), term(0), total(0)]
    assert all(name.startswith(RESERVED_PREFIX) for name in names)
    assert len(set(names)) == len(names)
