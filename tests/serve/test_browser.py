"""The playground in real headless Chromium: the page loads and runs, a click on the contour starts a run from
there with a trajectory per ticked optimizer, changing lr changes the trajectory, hovering a point shows that
step's trace, and the URL restores it all.

`OPTIMLAB_SCREENSHOT=docs/serve.png pytest tests/serve/test_browser.py -k screenshot` refreshes the README's
picture.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ELLIPSE_BOUNDS = ((-10.0, 10.0), (-5.0, 5.0))
DEFAULT_TICKED = ["SGD", "Momentum", "AdaGrad", "Adam"]


def _open(browser, url, width=1360, height=900):
    """A page on `url` once its first run is drawn, and the list its script errors and any request that
    leaves the server (a CDN, say: the page must work offline) are appended to."""
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []
    origin = url.split("/#")[0].rstrip("/")
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: request.url.startswith((origin, "data:")) or errors.append(request.url))
    page.goto(url)
    _wait_for_runs(page, 1)
    return page, errors


def _wait_for_runs(page, count):
    """Wait until the page has finished drawing (animation included) its `count`-th run."""
    page.wait_for_function("count => Number(document.body.dataset.runs) >= count", arg=count, timeout=20_000)


def _trajectories(page):
    """What Plotly holds for the contour plot's trajectories: {name: [(x, y), ...]}."""
    traces = page.evaluate("""() => document.querySelector("#contour").data
        .filter((trace) => trace.meta === "trajectory")
        .map((trace) => [trace.name, Array.from(trace.x), Array.from(trace.y)])""")
    return {name: list(zip(xs, ys, strict=True)) for name, xs, ys in traces}


def _drawn_lines(page):
    """How many trajectory lines the SVG shows (a path with a real `d`)."""
    return page.evaluate("""() => [...document.querySelectorAll("#contour .scatterlayer .trace path.js-line")]
        .filter((path) => (path.getAttribute("d") || "").length > 20).length""")


def _pixel(page, x, y, bounds=ELLIPSE_BOUNDS):
    """Page coordinates of the data point (x, y) on the contour plot."""
    box = page.locator("#contour .nsewdrag").bounding_box()
    (x_low, x_high), (y_low, y_high) = bounds
    return (box["x"] + (x - x_low) / (x_high - x_low) * box["width"],
            box["y"] + (y_high - y) / (y_high - y_low) * box["height"])


def test_click_runs_from_there_and_lr_changes_the_trajectory(browser, live_server):
    page, errors = _open(browser, live_server)
    first = _trajectories(page)
    assert list(first) == DEFAULT_TICKED
    assert all(len(points) == 31 and points[0] == (-7.0, 2.0) for points in first.values())
    assert _drawn_lines(page) == len(DEFAULT_TICKED)

    page.mouse.click(*_pixel(page, 5.0, -4.0))  # far from every path: a click on the surface itself
    _wait_for_runs(page, 2)
    clicked = _trajectories(page)
    assert list(clicked) == DEFAULT_TICKED
    for points in clicked.values():
        assert points[0] == pytest.approx((5.0, -4.0), abs=0.1)
        assert len(points) == 31
    assert _drawn_lines(page) == len(DEFAULT_TICKED)
    assert "start=" in page.url and page.locator("#start-text").inner_text() != "(-7, 2)"

    lr = page.locator("#adam-lr")
    assert lr.input_value() == "0.3"
    lr.fill("1")
    lr.press("Tab")
    _wait_for_runs(page, 3)
    changed = _trajectories(page)
    assert changed["Adam"] != clicked["Adam"]
    assert changed["Adam"][0] == clicked["Adam"][0]
    assert {name: changed[name] for name in ("SGD", "Momentum", "AdaGrad")} == \
           {name: clicked[name] for name in ("SGD", "Momentum", "AdaGrad")}
    assert "adam=lr:1" in page.url

    page.mouse.move(*_pixel(page, *changed["Adam"][1]))  # hover Adam's first step: its trace appears
    card = page.locator('#trace .card[data-optimizer="adam"]')
    card.locator("thead", has_text="t = 1").wait_for(timeout=5_000)
    for label in ("g_t", "m_t", "v_t", "m̂_t", "v̂_t", "α_t", "Δx"):
        assert card.locator("tbody th", has_text=label).count() == 1, label
    assert "focus" in (card.get_attribute("class") or "")
    assert errors == []

    url = page.url
    lr.fill("-1")  # the rule refuses it: the server's 422 is shown, naming the optimizer and the field
    lr.press("Tab")
    status = page.locator("#status.error")
    status.wait_for(timeout=10_000)
    assert status.inner_text().startswith("Adam, lr: Invalid lr: -1.0")
    assert _trajectories(page) == changed

    restored, errors = _open(browser, url)  # the link reproduces the picture
    assert restored.locator("#adam-lr").input_value() == "1"
    assert _trajectories(restored) == changed
    assert errors == []


def test_the_notes_parabola_in_one_dimension(browser, live_server):
    page, errors = _open(browser, f"{live_server}/#surface=notes&steps=20&start=0&sgd=lr:0.1&adam=lr:0.1")
    drawn = _trajectories(page)
    assert list(drawn) == ["SGD", "Adam"]
    assert drawn["SGD"][1] == pytest.approx((4.0, 4.0))  # x_1 = 4, f(x_1) = (8 − 10)² (SPEC §6)
    assert drawn["Adam"][1][0] == pytest.approx(0.1, abs=1e-9)
    assert page.locator("#formula").inner_text() == "f(x) = (2x − 10)²"
    assert errors == []


def test_screenshot(browser, live_server, tmp_path):
    """The README's picture: the DLFS quartet with Adam's step 12 under the pointer."""
    page, errors = _open(browser, live_server, width=1440, height=940)
    page.mouse.move(*_pixel(page, *_trajectories(page)["Adam"][12]))
    page.locator('#trace .card[data-optimizer="adam"] thead', has_text="t = 12").wait_for(timeout=5_000)
    target = Path(os.environ.get("OPTIMLAB_SCREENSHOT") or tmp_path / "serve.png")
    trace = page.locator("#trace").bounding_box()
    page.screenshot(path=str(target), clip={"x": 0, "y": 0, "width": 1440, "height": trace["y"] + trace["height"] + 12})
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert errors == []
