"""The playground's theory view: the (α, β) map endpoint agrees with the theory, and in headless Chromium a
click on a cell of the map runs that configuration and animates it, with no console errors.

`OPTIMLAB_THEORY_SCREENSHOT=docs/lab/playground-theory.png pytest tests/serve/test_theory_view.py` refreshes the
docs' picture.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from optimlab.lab.quadratic import MAP_CURVATURES, momentum_rate
from optimlab.serve import create_app

MAP_RANGE = ((0.0, 2.5), (0.0, 1.0))


def test_the_map_endpoint_is_the_lab_s_map_with_its_theory():
    answer = TestClient(create_app(), base_url="http://127.0.0.1").get("/api/theory/momentum-map")
    assert answer.status_code == 200
    body = answer.json()
    assert body["surface"] == "ellipse" and body["curvatures"] == list(MAP_CURVATURES)
    lrs, momentums = np.array(body["lrs"]), np.array(body["momentums"])
    assert len(lrs) == len(momentums) == 200 and np.shape(body["rate"]) == (200, 200)
    np.testing.assert_allclose(body["boundary_lr"], 2 * (1 + momentums) / max(MAP_CURVATURES))
    lr, momentum = np.meshgrid(lrs, momentums)
    diverged = np.array([[value is None for value in row] for row in body["rate"]])
    assert not diverged[(lr < 0.9 * 2 * (1 + momentum) / 2.0) & (momentum < 0.95)].any()
    assert diverged[lr > 1.1 * 2 * (1 + momentum) / 2.0].all()
    optimum = body["optimum"]
    assert momentum_rate(optimum["lr"], optimum["momentum"], MAP_CURVATURES) == pytest.approx(optimum["rate"],
                                                                                              rel=1e-6)


def _open_view(browser, live_server):
    page = browser.new_page(viewport={"width": 1360, "height": 1400})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.goto(f"{live_server}/#theory")
    page.wait_for_function("() => document.body.dataset.theoryReady === 'true'", timeout=30_000)
    return page, errors


def _click_cell(page, lr, momentum):
    box = page.locator("#theory-map .nsewdrag").bounding_box()
    (x_low, x_high), (y_low, y_high) = MAP_RANGE
    page.mouse.click(box["x"] + (lr - x_low) / (x_high - x_low) * box["width"],
                     box["y"] + (y_high - momentum) / (y_high - y_low) * box["height"])


def _trajectory(page):
    return page.evaluate("""() => {
        const trace = document.querySelector("#theory-run").data.find((item) => item.meta === "theory-trajectory");
        return Array.from(trace.x).map((x, index) => [x, trace.y[index]]);
    }""")


def _run_title(page):
    """The run chart's title as drawn (SVG text)."""
    return page.locator("#theory-run .gtitle").text_content()


@pytest.mark.browser
def test_clicking_a_cell_runs_and_animates_it(browser, live_server, tmp_path):
    page, errors = _open_view(browser, live_server)
    frames = []
    page.expose_function("recordFrame", lambda frame: frames.append(frame))
    page.evaluate("""() => new MutationObserver(() => window.recordFrame(document.body.dataset.theoryFrames))
        .observe(document.body, {attributes: true, attributeFilter: ["data-theory-frames"]})""")

    _click_cell(page, 1.0, 0.5)  # inside the region: αλ₁ = 2 < 2(1 + β) = 3
    page.wait_for_function("() => Number(document.body.dataset.theoryRuns) >= 1", timeout=20_000)
    path = _trajectory(page)
    assert len(path) == 61 and path[0] == [-7.0, 2.0]
    assert np.hypot(*path[-1]) < 0.1 * np.hypot(*path[0])
    assert len(set(frames)) > 10  # drawn step by step, not at once
    assert "converges" in _run_title(page)
    clicked = page.evaluate("""() => document.querySelector("#theory-map").data
        .find((item) => item.meta === "clicked")""")
    assert clicked["x"][0] == pytest.approx(1.0, abs=0.05) and clicked["y"][0] == pytest.approx(0.5, abs=0.02)

    _click_cell(page, 2.3, 0.1)  # outside: αλ₁ = 4.6 > 2(1 + β) = 2.2
    page.wait_for_function("() => Number(document.body.dataset.theoryRuns) >= 2", timeout=20_000)
    assert "diverges" in _run_title(page)
    assert np.hypot(*_trajectory(page)[-1]) > 1e3
    target = Path(os.environ.get("OPTIMLAB_THEORY_SCREENSHOT") or tmp_path / "theory.png")
    _click_cell(page, 1.3, 0.4)  # near the optimum, for the picture
    page.wait_for_function("() => Number(document.body.dataset.theoryRuns) >= 3", timeout=20_000)
    page.mouse.move(5, 5)  # no tooltip in the picture
    page.locator("#theory").screenshot(path=str(target))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert errors == []
