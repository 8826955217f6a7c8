"""lab/surfaces.py: exact gradients (against central differences), starts, bounds and minima."""

import numpy as np
import pytest

from optimlab.lab.surfaces import SURFACES, lookup_surface


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_gradient_matches_central_differences(name):
    surface = SURFACES[name]
    rng = np.random.default_rng(0)
    low, high = np.array(surface.bounds).T
    points = rng.uniform(low, high, size=(20, surface.dim))
    step = 1e-6
    numeric = np.stack([(surface.value(points + step * unit) - surface.value(points - step * unit)) / (2 * step)
                        for unit in np.eye(surface.dim)], axis=-1)
    np.testing.assert_allclose(surface.gradient(points), numeric, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_value_and_gradient_keep_the_batch_shape(name):
    surface = SURFACES[name]
    grid = np.zeros((3, 4, surface.dim))
    assert surface.value(grid).shape == (3, 4)
    assert surface.gradient(grid).shape == (3, 4, surface.dim)


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_start_lies_in_the_bounds_and_the_minimum_is_stationary(name):
    surface = SURFACES[name]
    assert len(surface.bounds) == surface.dim
    assert all(low <= x <= high for x, (low, high) in zip(surface.start, surface.bounds, strict=True))
    if surface.minimum is not None:
        np.testing.assert_allclose(surface.gradient(np.array(surface.minimum)), 0.0, atol=1e-12)
        assert surface.minimum_value == pytest.approx(0.0, abs=1e-12)


def test_the_notes_and_dlfs_settings():
    notes, ellipse = SURFACES["notes"], SURFACES["ellipse"]
    assert notes.gradient(np.array([0.0])).tolist() == [-40.0]
    assert notes.minimum == (5.0,)
    assert ellipse.start == (-7.0, 2.0)
    assert ellipse.value(np.array([-7.0, 2.0])) == pytest.approx(49 / 20 + 4)


def test_saddle_has_no_minimum():
    assert SURFACES["saddle"].minimum is None
    assert SURFACES["saddle"].minimum_value is None


def test_lookup_names_the_choices():
    assert lookup_surface("Ellipse") is SURFACES["ellipse"]
    with pytest.raises(ValueError, match="Invalid surface: 'moon'.*ellipse"):
        lookup_surface("moon")
