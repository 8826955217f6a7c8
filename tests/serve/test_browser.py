"""The playground in real headless Chromium: the page loads and runs, a click on the contour starts a run from
there with a trajectory per ticked optimizer, changing lr changes the trajectory, hovering a point shows that
step's trace, and the URL restores it all.

`OPTIMLAB_SCREENSHOT=docs/serve.png pytest tests/serve/test_browser.py -k screenshot` refreshes the README's
picture.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ELLIPSE_BOUNDS = ((-10.0, 10.0), (-5.0, 5.0))
DEFAULT_TICKED = ["SGD", "Momentum", "AdaGrad", "Adam"]


def _open(browser, url, width=1360, height=900):
    """A page on `url` once its first run is drawn, and the list its script errors, console errors (Plotly's
    "attribute d: Expected number", say) and any request that leaves the server (a CDN, say: the page must work
    offline) are appended to."""
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []
    origin = url.split("/#")[0].rstrip("/")
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type in ("error", "warning") and errors.append(message.text))
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


def _surfaces(live_server):
    with urllib.request.urlopen(f"{live_server}/api/surfaces", timeout=30) as response:
        return {surface["name"]: surface for surface in json.load(response)}


def test_click_runs_from_there_and_lr_changes_the_trajectory(browser, live_server):
    page, errors = _open(browser, live_server)
    ellipse = _surfaces(live_server)["ellipse"]
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
    assert float(lr.input_value()) == ellipse["defaults"]["adam"]["lr"]
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


def _y_ticks(page):
    """The loss chart's y-axis labels."""
    return page.evaluate("""() => [...document.querySelectorAll("#loss .ytick text")].map((t) => t.textContent)""")


def _clipped(page):
    """Texts cut off: a surface menu option wider than its menu, a chart title wider than its chart."""
    return page.evaluate("""() => {
        const cut = [];
        const select = document.querySelector("#surface");
        const style = getComputedStyle(select);
        const canvas = document.createElement("canvas").getContext("2d");
        canvas.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
        const room = select.clientWidth - 28;  // the arrow and the padding
        for (const option of select.options) {
            if (canvas.measureText(option.text).width > room) cut.push(option.text);
        }
        for (const chart of document.querySelectorAll(".chart")) {
            const title = chart.querySelector(".gtitle");
            if (title && title.getBoundingClientRect().right > chart.getBoundingClientRect().right) {
                cut.push(title.textContent);
            }
        }
        return cut;
    }""")


@pytest.mark.slow
def test_every_surface_gets_its_defaults_and_a_readable_chart(browser, live_server):
    """Switching surfaces used to keep the ellipse's lrs: SGD and Momentum diverged on Rosenbrock and Beale, the
    f(x_t) axis filled with hundreds of decade labels and Plotly logged errors for coordinates like 1e200."""
    surfaces = _surfaces(live_server)
    page, errors = _open(browser, live_server, width=920)  # the narrowest two-column layout
    runs = 1
    for name, surface in surfaces.items():
        if page.locator("#surface").input_value() != name:
            page.select_option("#surface", name)
            runs += 1
            _wait_for_runs(page, runs)
        assert page.locator("#steps").input_value() == str(surface["steps"]), name
        for optimizer in ("sgd", "momentum", "adagrad", "adam"):
            assert float(page.locator(f"#{optimizer}-lr").input_value()) == surface["defaults"][optimizer]["lr"]
        assert "diverged" not in page.locator("#status").inner_text(), name
        assert page.locator("#status.error").count() == 0, name
        assert 2 <= len(_y_ticks(page)) <= 12, (name, _y_ticks(page))
        drawn = _trajectories(page)
        assert list(drawn) == DEFAULT_TICKED and all(len(points) == surface["steps"] + 1 for points in drawn.values())
        assert _clipped(page) == [], name
    assert errors == []


def test_a_diverging_run_is_cut_and_marked_and_the_axis_stays_readable(browser, live_server):
    """The ellipse's SGD lr on Rosenbrock overflows within 5 steps: the others keep the axis, SGD leaves it with
    an ×, and its legend says where it diverged."""
    page, errors = _open(browser, f"{live_server}/#surface=rosenbrock&steps=60&sgd=lr:0.95&adam=lr:0.3")
    assert "SGD diverged at step" in page.locator("#status").inner_text()
    assert 2 <= len(_y_ticks(page)) <= 12, _y_ticks(page)
    sgd = page.evaluate("""() => {
        const trace = document.querySelector("#loss").data.find((trace) => trace.meta === "diverged");
        return {name: trace.name, sizes: Array.from(trace.marker.size), ys: Array.from(trace.y)};
    }""")
    assert sgd["name"].startswith("SGD (diverged at step")
    assert sgd["sizes"][-1] > 0 and not any(sgd["sizes"][:-1])  # the × where it leaves the axis
    assert max(sgd["ys"]) < 1e6  # cut at the axis's edge, not drawn up to 1e300
    assert errors == []


def test_steps_zero_is_refused_with_a_clear_message_then_forgotten(browser, live_server):
    page, errors = _open(browser, live_server)
    steps = page.locator("#steps")
    steps.fill("0")
    steps.press("Tab")
    status = page.locator("#status.error")
    status.wait_for(timeout=5_000)
    assert status.inner_text().startswith("Steps: enter a whole number from 1 to 10000")
    steps.fill("12")
    steps.press("Tab")
    _wait_for_runs(page, 2)
    assert page.locator("#status.error").count() == 0 and "12 steps" in page.locator("#status").inner_text()
    assert all(len(points) == 13 for points in _trajectories(page).values())
    assert errors == []


@pytest.mark.parametrize("fragment", ["surface=toString",
                                      "surface=__proto__&steps=%&constructor=1&sgd=lr:toString,__proto__:1"])
def test_a_link_naming_prototype_properties_loads_the_default_view(browser, live_server, fragment):
    """`#surface=toString` found Object.prototype.toString "in" the surfaces and killed the page."""
    page, errors = _open(browser, f"{live_server}/#{fragment}")
    assert page.locator("#surface").input_value() == "ellipse"
    drawn = _trajectories(page)
    assert list(drawn) == (["SGD"] if "sgd=" in fragment else DEFAULT_TICKED)
    assert all(points[0] == (-7.0, 2.0) for points in drawn.values())
    assert errors == []


def test_a_busy_server_is_waited_out(browser, live_server):
    """A 503 (runs in flight at the bound) is retried after its Retry-After, and says so meanwhile."""
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors, answered = [], []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def busy_once(route):
        answered.append(route.request.url)
        if len(answered) == 1:
            route.fulfill(status=503, headers={"Retry-After": "1"}, content_type="application/json",
                          body='{"detail": "busy: 4 runs in flight; retry in a second"}')
        else:
            route.continue_()

    page.route("**/api/run", busy_once)
    page.goto(f"{live_server}/#surface=notes&sgd&adam")
    page.locator("#status", has_text="The server is busy: trying again in 1 s").wait_for(timeout=10_000)
    _wait_for_runs(page, 1)
    assert len(answered) == 2 and page.locator("#status.error").count() == 0
    assert list(_trajectories(page)) == ["SGD", "Adam"]
    assert errors == []


def test_screenshot(browser, live_server, tmp_path):
    """The README's picture: four optimizers at their ellipse defaults, Adam's step 12 under the pointer."""
    page, errors = _open(browser, live_server, width=1440, height=940)
    page.mouse.move(*_pixel(page, *_trajectories(page)["Adam"][12]))
    page.locator('#trace .card[data-optimizer="adam"] thead', has_text="t = 12").wait_for(timeout=5_000)
    target = Path(os.environ.get("OPTIMLAB_SCREENSHOT") or tmp_path / "serve.png")
    trace = page.locator("#trace").bounding_box()
    page.screenshot(path=str(target), clip={"x": 0, "y": 0, "width": 1440, "height": trace["y"] + trace["height"] + 12})
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert errors == []
