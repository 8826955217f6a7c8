"""The harness reports a failing or hanging rank promptly and by name, and still runs the other scenarios."""

import pytest

pytestmark = pytest.mark.distributed

#: Shorter than the 60 s collective timeout in `worker.py`: a report that arrives within it cannot come
#: from rank 0 giving up on its barrier, only from the harness noticing rank 1's exit and stopping rank 0.
TIMEOUT = 30


def test_a_failure_in_one_rank_is_reported_with_its_rank_and_traceback(harness):
    outcomes = harness(["passes", "fails_in_rank_1", "passes_again"], module="harness_scenarios",
                       timeout=TIMEOUT)

    failure = outcomes["fails_in_rank_1"].failure
    assert failure is not None
    assert "scenario 'fails_in_rank_1' failed in rank 1 of 2" in failure
    assert "RuntimeError: deliberate failure in rank 1" in failure
    assert "timed out" not in failure


def test_the_scenarios_around_a_failure_keep_their_own_verdicts(harness):
    outcomes = harness(["passes", "fails_in_rank_1", "passes_again"], module="harness_scenarios",
                       timeout=TIMEOUT)

    assert outcomes["passes"].failure is None
    assert outcomes["passes_again"].failure is None


def test_a_hang_is_killed_at_the_timeout_and_reported_with_where_each_rank_was(harness):
    outcomes = harness(["passes", "hangs"], module="harness_scenarios", timeout=10)

    assert outcomes["passes"].failure is None
    failure = outcomes["hangs"].failure
    assert failure is not None
    assert "timed out after 10 s (rank 0 in 'hangs', rank 1 in 'hangs')" in failure
