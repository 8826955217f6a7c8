"""lab/train.py: backpropagation, determinism, a shared init, and the figure and CSV."""

import numpy as np
import pytest

from optimlab.lab.train import (
    initial_parameters,
    load_digits_split,
    loss_and_gradients,
    plot_training,
    train,
    train_all,
    write_training_csv,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits_split(seed=0)


def test_split_is_the_bundled_digits(digits):
    assert digits.train_x.shape == (1437, 64) and digits.test_x.shape == (360, 64)
    assert 0.0 <= digits.train_x.min() and digits.train_x.max() <= 1.0


def test_gradients_match_finite_differences(digits):
    params = initial_parameters(seed=3, hidden=5)
    x, y = digits.train_x[:7], digits.train_y[:7]
    _, _, gradients = loss_and_gradients(params, x, y)
    rng = np.random.default_rng(0)
    for name, param in params.items():
        for index in [tuple(rng.integers(size) for size in param.shape) for _ in range(4)]:
            original = param[index]
            param[index] = original + 1e-6
            upper = loss_and_gradients(params, x, y)[0]
            param[index] = original - 1e-6
            lower = loss_and_gradients(params, x, y)[0]
            param[index] = original
            assert gradients[name][index] == pytest.approx((upper - lower) / 2e-6, rel=1e-4, abs=1e-8)


def test_training_is_deterministic_for_a_seed(digits):
    first = train("adam", digits, epochs=1, hidden=16, seed=5)
    second = train("adam", digits, epochs=1, hidden=16, seed=5)
    np.testing.assert_array_equal(first.batch_loss, second.batch_loss)
    np.testing.assert_array_equal(first.test_accuracy, second.test_accuracy)
    other = train("adam", digits, epochs=1, hidden=16, seed=6)
    assert not np.array_equal(first.batch_loss, other.batch_loss)


def test_every_optimizer_starts_from_the_same_loss_and_learns():
    runs = train_all(["sgd", "momentum", "adagrad", "rmsprop", "adam"], epochs=2, hidden=16)
    first_losses = {result.batch_loss[0] for result in runs.values()}
    assert len(first_losses) == 1  # same init, same first batch
    for result in runs.values():
        assert result.test_accuracy[-1] > 0.7  # chance is 0.1


def test_figure_and_csv(tmp_path, check):
    runs = train_all(["sgd", "adam"], epochs=2, hidden=8)
    check.png(plot_training(runs, tmp_path / "curves.png", span=10))
    rows = check.csv(write_training_csv(runs, tmp_path / "metrics.csv", span=10))
    assert len(rows) == 2 * 2 * 45
    epoch_ends = [row for row in rows if row["test_accuracy"]]
    assert len(epoch_ends) == 4 and epoch_ends[-1]["step"] == "90"
    # the bias-corrected EMA starts at p₁ (up to rounding in α p₁ / α)
    assert float(rows[0]["batch_loss_ema"]) == pytest.approx(float(rows[0]["batch_loss"]), rel=1e-14)
