"""The report's tables and figures: one stated arrival criterion everywhere, and no text cut off at the edge."""

import html
import re

import pytest

from optimlab.lab import paths, style, tour
from optimlab.lab.paths import PRESETS, compare, lr_sweeps


def _row(body: str, optimizer: str) -> list[str]:
    row = re.search(rf"<tr><td>{optimizer}</td>(.*?)</tr>", body)
    assert row is not None, f"no row for {optimizer}"
    return re.findall(r"<td>(.*?)</td>", row.group(1))


def test_the_notes_table_and_the_worked_example_count_the_same_arrival(tmp_path):
    """The notes' preset table beside the 1-D plot and the worked example's text: the same step for Adam."""
    notes = tour.preset_experiment(tmp_path, "notes", gif=False)
    example = tour.worked_example_section()
    adam = re.search(r"GD \(lr 0.1\): (\d+); Adam: (\d+)", example.body)
    assert adam is not None
    assert html.escape(tour.ARRIVED) in notes.body and "‖x_t − x*‖ &lt; 10⁻³" in notes.body
    assert _row(notes.body, "Adam")[-1] == adam.group(2)
    assert _row(notes.body, "SGD")[-1] == adam.group(1)
    assert "x* = (5)" in notes.body  # the criterion is stated beside the table


def test_arrival_is_the_first_step_within_the_tolerance_of_the_minimizer():
    runs = compare("ellipse", lrs={"sgd": 0.5}, steps=200)
    distance = paths.distance_to_minimum(paths.lookup_surface("ellipse"), runs["sgd"])
    step = paths.arrival_step(paths.lookup_surface("ellipse"), runs["sgd"])
    assert step is not None and distance[step] < paths.ARRIVAL_TOLERANCE <= distance[step - 1]
    assert paths.arrival_step(paths.lookup_surface("saddle"), compare("saddle", lrs={"sgd": 0.1}, steps=5)["sgd"]) \
        is None


def _figures(monkeypatch) -> list:
    made = []

    def recording(width, height):
        figure = style.new_figure(width, height)
        made.append(figure)
        return figure

    monkeypatch.setattr(paths, "new_figure", recording)
    return made


def _assert_no_text_outside(figure) -> None:
    renderer = figure.canvas.get_renderer()
    texts = [figure._suptitle] if figure._suptitle is not None else []
    for axes in figure.axes:
        if axes.get_visible():
            texts += [axes.title, axes._left_title, axes._right_title, axes.xaxis.label, axes.yaxis.label]
    for text in texts:
        if text.get_text():
            box = text.get_window_extent(renderer)
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= figure.bbox.x1 and box.y1 <= figure.bbox.y1, \
                f"{text.get_text()!r} is cut off: {box} outside {figure.bbox}"


@pytest.mark.parametrize("surface", tour.TOUR_SURFACES)
def test_sweep_figures_show_their_titles_whole(tmp_path, monkeypatch, surface):
    made = _figures(monkeypatch)
    paths.plot_lr_sweep(surface, lr_sweeps(surface, style.NOTES_OPTIMIZERS, 20, [1e-3, 1e-2, 0.1]),
                        tmp_path / "sweep.png")
    _assert_no_text_outside(made[-1])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_path_figures_show_their_titles_whole(tmp_path, monkeypatch, preset):
    made = _figures(monkeypatch)
    setting = PRESETS[preset]
    paths.plot_paths(setting.surface, compare(setting.surface, lrs=setting.lrs, steps=setting.steps),
                     tmp_path / "paths.png")
    _assert_no_text_outside(made[-1])
