"""optimlab's optimizers under torch.distributed, in real 2-process gloo groups (see `scenarios.py`).

All scenarios of this module run in one process group (the `scenario_outcomes` fixture); each test reports
its own scenario's verdict.
"""

import pytest

pytestmark = pytest.mark.distributed

MATCHING = [f"{parallelism}_{backend}" for backend in ("eager", "numba")
            for parallelism in ("ddp_adamw", "fsdp2", "fsdp2_lamb", "fsdp2_schedulefree", "fsdp2_adafactor",
                                 "fsdp2_clipped", "zero_adam", "dcp_resume")]
SCENARIOS = [*MATCHING, "fsdp2_mismatched_gradient"]


@pytest.mark.parametrize("scenario", MATCHING)
def test_matches_torch_optim(scenario, scenario_outcomes):
    scenario_outcomes[scenario].check()


@pytest.mark.parametrize("scenario", ["fsdp2_mismatched_gradient"])
def test_a_dtensor_param_with_a_differently_sharded_gradient_is_refused(scenario, scenario_outcomes):
    scenario_outcomes[scenario].check()
