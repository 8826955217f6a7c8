"""optimlab's optimizers under torch.distributed, in real 2-process gloo groups (see `scenarios.py`)."""

import pytest

pytestmark = pytest.mark.distributed

SCENARIOS = [f"{parallelism}_{backend}" for backend in ("eager", "numba")
             for parallelism in ("ddp_adamw", "fsdp2", "zero_adam", "dcp_resume")]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_matches_torch_optim(scenario, scenario_outcomes):
    scenario_outcomes[scenario].check()
