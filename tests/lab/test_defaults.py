"""`lab.defaults`: each optimizer's hyperparameters on each surface, the lr being its sweep's best."""

import numpy as np
import pytest

from optimlab.lab import best_lr
from optimlab.lab.defaults import STEPS, all_defaults, steps_for, surface_defaults
from optimlab.lab.surfaces import SURFACES
from optimlab.rules import OPTIMIZERS


@pytest.mark.parametrize("surface", ["rosenbrock", "notes"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "nesterov"])
def test_the_lr_is_the_one_its_sweep_scores_best(surface, optimizer):
    """The tour's sweep: 200 lrs log-spaced from 1e−3 to 10 (to three significant digits, as the page shows an
    lr), `STEPS[surface]` steps from the default start."""
    grid = np.unique([float(f"{lr:.3g}") for lr in np.geomspace(1e-3, 10.0, 200)])
    expected = best_lr(surface, optimizer, lrs=grid, steps=STEPS[surface])
    assert surface_defaults(surface)[optimizer]["lr"] == expected


def test_the_other_hyperparameters_are_pytorchs_with_the_optimizers_overrides():
    defaults = surface_defaults("beale")
    assert list(defaults) == list(OPTIMIZERS)
    assert defaults["adam"]["betas"] == (0.9, 0.999) and defaults["adam"]["eps"] == 1e-8
    assert defaults["nesterov"]["nesterov"] is True
    assert defaults["adamw"]["decoupled_weight_decay"] is True and defaults["adamw"]["weight_decay"] == 1e-2


def test_every_surface_has_defaults_and_the_answer_is_a_copy():
    assert list(all_defaults()) == list(SURFACES)
    surface_defaults("ellipse")["sgd"]["lr"] = -1.0
    assert surface_defaults("ellipse")["sgd"]["lr"] > 0


def test_steps_default_to_100_off_the_table():
    assert steps_for("rosenbrock") == 300 and steps_for("a-surface-added-later") == 100


def test_an_unknown_surface_names_the_choices():
    with pytest.raises(ValueError, match="Invalid surface: 'moon'.*ellipse"):
        surface_defaults("moon")
