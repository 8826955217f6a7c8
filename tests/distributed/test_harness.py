"""The harness reports a failing or hanging rank promptly and by name, and still runs the other scenarios."""

import pytest

pytestmark = pytest.mark.distributed

#: Per-scenario timeout, shorter than the 60 s collective timeout in `worker.py`: a report of rank 1's error
#: (not of a timeout) cannot come from rank 0 giving up on its barrier, only from the harness noticing rank 1's
#: exit and stopping rank 0.
TIMEOUT = 30


@pytest.fixture(scope="module")
def around_a_failure(harness):
    """One run of a scenario that fails in rank 1 between two that pass."""
    return harness(["passes", "fails_in_rank_1", "passes_again"], module="harness_scenarios", timeout=TIMEOUT)


def test_a_failure_in_one_rank_is_reported_with_its_rank_and_traceback(around_a_failure):
    failure = around_a_failure["fails_in_rank_1"].failure
    assert failure is not None
    assert "scenario 'fails_in_rank_1' failed in rank 1 of 2" in failure
    assert "RuntimeError: deliberate failure in rank 1" in failure
    assert "timed out" not in failure


def test_the_scenarios_around_a_failure_keep_their_own_verdicts(around_a_failure):
    assert around_a_failure["passes"].failure is None
    assert around_a_failure["passes_again"].failure is None


def test_a_hang_is_killed_at_the_timeout_and_reported_with_where_each_rank_was(harness):
    outcomes = harness(["passes", "hangs"], module="harness_scenarios", timeout=5)

    assert outcomes["passes"].failure is None
    failure = outcomes["hangs"].failure
    assert failure is not None
    assert "scenario 'hangs' timed out: a rank spent more than 5 s in it" in failure
    assert "(ranks were: rank 0 in 'hangs', rank 1 in 'hangs')" in failure
