"""lab.quadratic against the closed forms: the rates, the eigen-components, the stability region, damping."""

import numpy as np
import pytest
from typer.testing import CliRunner

from optimlab.cli import app
from optimlab.lab.quadratic import (
    KAPPAS,
    MAP_CURVATURES,
    critical_momentum,
    eigen_components,
    gd_optimum,
    measured_rate,
    momentum_optimum,
    momentum_rate,
    phase_portrait,
    rates_by_condition,
    stability_map,
    stable,
)


def test_closed_forms_agree_with_the_roots():
    for kappa in (2.0, 50.0, 1e4):
        gd, heavy = gd_optimum(kappa), momentum_optimum(kappa)
        assert momentum_rate(gd.lr, 0.0, (kappa, 1.0)) == pytest.approx(gd.rate, rel=1e-12)
        assert momentum_rate(heavy.lr, heavy.momentum, (kappa, 1.0)) == pytest.approx(heavy.rate, rel=1e-6)
        assert heavy.rate == pytest.approx(np.sqrt(heavy.momentum))


def test_measured_rate_reads_a_geometric_error_and_a_vanished_one():
    steps = np.arange(401)[:, None]
    errors = np.concatenate([0.9 ** steps, 0.5 ** steps, np.r_[1.0, np.zeros(400)][:, None]], axis=1)
    np.testing.assert_allclose(measured_rate(errors), [0.9, 0.5, 0.0], rtol=1e-9)


def test_gd_and_momentum_rates_are_the_closed_forms_for_every_kappa():
    rows = rates_by_condition(adaptive=())
    assert len(KAPPAS) >= 8 and min(KAPPAS) == 1 and max(KAPPAS) >= 1e4
    assert [(row.optimizer, row.kappa) for row in rows] == \
        [("gd", kappa) for kappa in KAPPAS] + [("momentum", kappa) for kappa in KAPPAS]
    for row in rows:
        if row.theoretical_rate == 0:  # κ = 1: both reach the minimum in one step
            assert row.measured_rate < 1e-12, row
        else:
            assert np.log(row.measured_rate) / np.log(row.theoretical_rate) == pytest.approx(1, abs=0.02), row


def test_adaptive_rules_are_measured_at_their_best_lr_without_a_closed_form():
    grid = np.geomspace(1e-2, 1.0, 5)
    rows = rates_by_condition((1.0, 100.0), adaptive=("adagrad", "adam"), adaptive_steps=200, lrs=grid)
    adaptive = [row for row in rows if row.optimizer in ("adagrad", "adam")]
    assert len(adaptive) == 4
    for row in adaptive:
        assert row.theoretical_rate is None and row.lr in grid and 0 <= row.measured_rate < 1


def test_gd_eigen_components_decay_at_their_own_rates():
    curvatures = np.array([0.01, 0.1, 0.5, 1.0])
    components = eigen_components(curvatures, steps=40, gd_lr=1.5, momentum=(1.2, 0.6))
    gd = components.path["gd"]
    np.testing.assert_allclose(gd[1:] / gd[:-1], np.broadcast_to(1 - 1.5 * curvatures, (40, 4)), rtol=1e-12)
    heavy = components.path["momentum"]  # the momentum rule is the heavy ball, component by component
    recurrence = (1 + 0.6 - 1.2 * curvatures) * heavy[1:-1] - 0.6 * heavy[:-2]
    np.testing.assert_allclose(heavy[2:], recurrence, rtol=1e-9, atol=1e-15)


def test_the_map_converges_inside_the_stability_region_and_diverges_outside():
    result = stability_map("momentum")
    assert result.rate.shape == (200, 200) and result.curvature == max(MAP_CURVATURES)
    lr, momentum = np.meshgrid(result.lrs, result.momentums)
    theory = momentum_rate(lr, momentum, MAP_CURVATURES)
    # clearly inside: αλ₁ < 0.9 · 2(1 + β) and β < 0.95 (closer to β = 1 a rate near 1 needs more than 100
    # steps to read); clearly outside: αλ₁ > 1.1 · 2(1 + β)
    inside = stable(lr / 0.9, momentum, result.curvature) & (momentum < 0.95)
    outside = ~stable(lr / 1.1, momentum, result.curvature)
    assert inside.sum() > 20_000 and outside.sum() > 10_000
    assert result.converged[inside].all()
    assert not result.converged[outside].any()
    deviation = np.abs(result.rate[inside] - theory[inside])
    assert np.median(deviation) < 1e-3 and deviation.max() < 0.08


def test_adam_map_is_measured_in_one_sweep():
    result = stability_map("adam", resolution=30, steps=40)
    assert result.rate.shape == (30, 30) and np.all(result.rate >= 0)
    assert 0.2 < result.converged.mean() < 1.0  # small lrs creep in, the largest overshoot and stall


def test_phase_portrait_oscillates_only_above_critical_damping():
    portrait = phase_portrait(curvature=1.0, lr=0.1, steps=80)
    assert portrait.momentums[1] == pytest.approx(float(critical_momentum(0.1, 1.0)))
    below, at, above = portrait.position.T
    assert np.all(below > 0) and np.all(at > 0)   # real roots: x creeps to 0 from one side
    assert np.any(above < 0)                     # complex roots: it overshoots and spirals in
    assert abs(above[-1]) < 1e-3 and abs(at[-1]) < 1e-3


runner = CliRunner()


@pytest.mark.slow
def test_quadratic_command_writes_every_file_with_exact_columns(tmp_path, check):
    result = runner.invoke(app, ["quadratic", "--kappas", "1,10,100", "--resolution", "20", "--map-steps", "20",
                                 "--adaptive-steps", "50", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("quadratic-components.png", "quadratic-rates.png", "quadratic-maps.png", "quadratic-phase.png"):
        check.png(tmp_path / name)
        assert str(tmp_path / name) in result.output
    rates = check.csv(tmp_path / "quadratic-rates.csv")
    assert list(rates[0]) == ["optimizer", "kappa", "lr", "momentum", "measured_rate", "theoretical_rate"]
    assert {row["optimizer"] for row in rates} == {"gd", "momentum", "adagrad", "rmsprop", "adam"}
    assert all((row["theoretical_rate"] == "") == (row["optimizer"] not in ("gd", "momentum")) for row in rates)
    assert all(float(row[column]) >= 0 for row in rates for column in ("kappa", "lr", "momentum", "measured_rate"))
    for name in ("stability.csv", "adam-stability.csv"):
        cells = check.csv(tmp_path / name)
        assert list(cells[0]) == ["lr", "momentum", "curvature", "converged", "rate"]
        assert len(cells) == 400 and {row["converged"] for row in cells} == {"0", "1"}


@pytest.mark.parametrize("arguments, message", [
    (["--kappas", "0.5"], "Invalid --kappas: '0.5' (condition numbers must be >= 1)"),
    (["--kappas", "1,x"], "Invalid --kappas: '1,x'"),
    (["--resolution", "1"], "Invalid --resolution: 1 (must be >= 2)"),
    (["--map-steps", "0"], "Invalid --map-steps: 0"),
])
def test_quadratic_command_refuses_bad_input_in_one_line(tmp_path, arguments, message):
    result = runner.invoke(app, ["quadratic", *arguments, "--out", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not any(tmp_path.iterdir())


def test_quadratic_help_has_examples():
    result = runner.invoke(app, ["quadratic", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output and "--out" in result.output
