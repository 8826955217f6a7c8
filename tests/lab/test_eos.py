"""lab.eos: the hand-written derivatives against torch.func, and the edge of stability itself."""

import numpy as np
import pytest
from typer.testing import CliRunner

from optimlab.cli import app
from optimlab.lab.eos import edge_of_stability, make_problem, top_eigenvalue


@pytest.fixture(scope="module")
def problem():
    return make_problem(hidden=8, samples=60)


def _torch_loss(problem):
    torch = pytest.importorskip("torch")
    inputs, targets = torch.from_numpy(problem.inputs), torch.from_numpy(problem.targets)

    def loss(flat):
        params = problem.unflatten(flat)
        hidden = torch.relu(inputs @ params["W1"] + params["b1"])
        return 0.5 * ((hidden @ params["W2"] + params["b2"] - targets) ** 2).sum(dim=1).mean()

    return torch, loss


@pytest.mark.slow  # importing torch takes seconds
def test_gradient_and_hessian_vector_product_are_torch_func_s(problem):
    torch, loss = _torch_loss(problem)
    from torch.func import grad, jvp

    rng = np.random.default_rng(1)
    point = problem.start + 0.05 * rng.normal(size=problem.start.size)
    direction = rng.normal(size=point.size)
    theta, vector = torch.from_numpy(point), torch.from_numpy(direction)
    assert problem.loss(point) == pytest.approx(float(loss(theta)), rel=1e-12)
    np.testing.assert_allclose(problem.gradient(point), grad(loss)(theta).numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(problem.hessian_vector_product(point, direction),
                               jvp(grad(loss), (theta,), (vector,))[1].numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.slow
def test_power_iteration_finds_the_top_eigenvalue(problem):
    torch, loss = _torch_loss(problem)
    hessian = torch.func.hessian(loss)(torch.from_numpy(problem.start)).numpy()
    vector = np.random.default_rng(0).normal(size=problem.start.size)
    eigenvalue, _ = top_eigenvalue(problem, problem.start, vector, 300)
    assert eigenvalue == pytest.approx(np.linalg.eigvalsh(hessian)[-1], rel=1e-6)
    scale = np.linspace(0.5, 2.0, problem.start.size)  # P⁻¹H has the eigenvalues of P^(−½) H P^(−½)
    preconditioned = hessian / np.sqrt(scale)[:, None] / np.sqrt(scale)[None, :]
    eigenvalue, _ = top_eigenvalue(problem, problem.start, vector, 300, scale)
    assert eigenvalue == pytest.approx(np.linalg.eigvalsh(preconditioned)[-1], rel=1e-6)


def test_gd_sharpens_to_two_over_lr_and_hovers():
    runs = edge_of_stability(lrs=(0.2, 0.4), adam_lrs=(0.03,), steps=200, every=20, samples=400)
    for run in runs:
        assert run.sharpness[:3].min() < 0.75 * run.threshold   # it starts well below: sharpening brings it
        assert run.late_sharpness() == pytest.approx(run.threshold, rel=0.15), run.sharpness
    assert [run.threshold for run in runs[:2]] == [2 / 0.2, 2 / 0.4]
    assert runs[2].threshold == pytest.approx((2 + 2 * 0.9) / ((1 - 0.9) * 0.03))


runner = CliRunner()


@pytest.mark.slow
def test_eos_command_writes_the_figure_and_exact_columns(tmp_path, check):
    result = runner.invoke(app, ["eos", "--steps", "20", "--every", "10", "--samples", "50", "--hidden", "8",
                                 "--adam-lrs", "0.03", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    check.png(tmp_path / "eos.png")
    rows = check.csv(tmp_path / "eos.csv")
    assert list(rows[0]) == ["lr", "step", "loss", "sharpness"]
    expected = [(lr, step) for lr in ("0.2", "0.4") for step in ("0", "10", "20")]
    assert [(row["lr"], row["step"]) for row in rows] == expected
    assert all(float(row["loss"]) > 0 and float(row["sharpness"]) > 0 for row in rows)
    assert list(check.csv(tmp_path / "eos-adam.csv")[0]) == ["lr", "step", "loss", "preconditioned_sharpness",
                                                             "threshold"]


@pytest.mark.parametrize("arguments, message", [
    (["--lrs", "abc"], "Invalid --lrs: 'abc' (expected comma-separated numbers"),
    (["--lrs", "-0.1"], "Invalid --lrs: '-0.1' (expected comma-separated finite numbers > 0)"),
    (["--lrs", ""], "Invalid --lrs: '' (give at least one GD step size"),
    (["--steps", "0"], "Invalid --steps: 0 (must be >= 1)"),
    (["--every", "400"], "Invalid --every: 400 (must be <= --steps, 300)"),
    (["--samples", "3"], "Invalid --samples: 3 (must be >= 10)"),
    (["--out", "{file}"], "is a file, not a folder"),
])
def test_eos_command_refuses_bad_input_in_one_line(tmp_path, arguments, message):
    (tmp_path / "file").write_text("")
    arguments = [argument.format(file=tmp_path / "file") for argument in arguments]
    result = runner.invoke(app, ["eos", "--out", str(tmp_path), *arguments])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert [path.name for path in tmp_path.iterdir()] == ["file"]


def test_eos_help_has_examples():
    result = runner.invoke(app, ["eos", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output and "--out" in result.output
