"""lab/sparse.py: the notes' sparse feature, and AdaGrad's per-element rate winning on it."""

import numpy as np

from optimlab.lab.sparse import SPARSE, make_problem, plot_sparse, race, summary_rows, write_sparse_csv


def test_the_sparse_feature_is_rare_and_its_gradient_is_zero_without_it():
    problem = make_problem(samples=5000, density=0.01, seed=0)
    active = problem.features[:, SPARSE] != 0
    assert 25 <= active.sum() <= 75
    silent = int(np.nonzero(~active)[0][0]) + 1
    assert problem.gradient(silent, np.zeros((3, 5)))[:, SPARSE].tolist() == [0.0, 0.0, 0.0]


def test_adagrad_settles_all_weights_first_and_is_deterministic():
    problem = make_problem()
    results = race(problem, ["sgd", "adagrad"])
    adagrad, sgd = results["adagrad"], results["sgd"]
    assert adagrad.steps_to_tolerance("sparse") < sgd.steps_to_tolerance("sparse")
    assert adagrad.steps_to_tolerance("all") < sgd.steps_to_tolerance("all")
    again = race(make_problem(), ["adagrad"])["adagrad"]
    np.testing.assert_array_equal(again.weights, adagrad.weights)


def test_given_lrs_are_used_and_files_are_valid(tmp_path, check):
    problem = make_problem(samples=400, seed=1)
    results = race(problem, ["sgd", "adam"], lrs={"sgd": 0.05, "adam": 0.1})
    assert [row["lr"] for row in summary_rows(results)] == [0.05, 0.1]
    check.png(plot_sparse(problem, results, tmp_path / "sparse.png"))
    rows = check.csv(write_sparse_csv(results, tmp_path / "sparse.csv"))
    assert len(rows) == 2 * 401 and float(rows[0]["sparse_error"]) == 3.0
