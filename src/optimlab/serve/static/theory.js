// optimlab playground, theory view: the heavy ball's (α, β) map on the ellipse; click a cell to watch it run.
//
// The map (GET /api/theory/momentum-map) is the lab's measured rate of 200 × 200 configurations of the
// momentum rule, with the theory's stability boundary αλ₁ = 2(1 + β) drawn over it. A click runs that
// (α, β) through the playground's own POST /api/run and animates the path on the ellipse's contours.
// This file only draws; it shares nothing with playground.js but the page.
"use strict";

(() => {
  const root = document.querySelector("#theory");
  if (!root) return;

  const STEPS = 60;
  const FRAME_MS = 40;
  const PLOT_CONFIG = {displayModeBar: false, responsive: true};
  const FONT = {family: "system-ui, sans-serif", size: 12};
  const view = {map: null, grid: null, surface: null, timer: 0, runs: 0, sequence: 0};

  function element(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    node.append(...children);
    return node;
  }

  const short = (value) => String(Number(value.toPrecision(3)));
  const status = element("p", {id: "theory-status", role: "status"});
  const mapChart = element("div", {id: "theory-map", class: "chart", "aria-label": "the (α, β) map"});
  const runChart = element("div", {id: "theory-run", class: "chart", "aria-label": "the clicked configuration's run"});
  const details = element("details", {id: "theory-view"},
    element("summary", {}, "Why momentum works: the (α, β) map — click a cell to run it"),
    element("p", {class: "hint"}, "Each cell is one configuration of the momentum rule on the ellipse ",
            "f = x²/20 + y² (λ = 0.1, 2), colored by its measured rate per step (grey: diverges). ",
            "Red: the theory's stability boundary 0 < αλ₁ < 2(1 + β). Click a cell to run it for ",
            `${STEPS} steps from (−7, 2).`),
    element("div", {class: "theory-charts"}, mapChart, runChart), status);
  root.append(details);

  function say(text, isError = false) {
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  async function getJson(url, options) {
    const response = await fetch(url, options);
    const answer = await response.json();
    if (!response.ok) throw new Error(JSON.stringify(answer.detail));
    return answer;
  }

  function drawMap() {
    const map = view.map;
    const {lr, momentum, rate} = map.optimum;
    Plotly.newPlot(mapChart, [
      {type: "heatmap", x: map.lrs, y: map.momentums, z: map.rate, zmin: 0, zmax: 1, colorscale: "Viridis",
       colorbar: {title: {text: "rate", side: "right"}, thickness: 12}, meta: "rate",
       hovertemplate: "α = %{x:.3f}, β = %{y:.3f}<br>rate %{z:.4f}<extra>click: run it</extra>"},
      {type: "scatter", mode: "lines", x: map.boundary_lr, y: map.momentums, name: "αλ₁ = 2(1 + β)",
       line: {color: "red", width: 2.5}, hoverinfo: "skip"},
      {type: "scatter", mode: "markers", x: [lr], y: [momentum], name: `optimum (rate ${short(rate)})`,
       marker: {symbol: "star", size: 14, color: "white", line: {color: "black", width: 1}}, hoverinfo: "skip"},
      {type: "scatter", mode: "markers", x: [], y: [], name: "clicked", meta: "clicked",
       marker: {symbol: "x", size: 11, color: "#ff7f0e", line: {color: "black", width: 1}}, hoverinfo: "skip"},
    ], {
      font: FONT, margin: {l: 55, r: 10, t: 36, b: 45}, plot_bgcolor: "#d9d9d9",
      title: {text: `Heavy ball: measured rate, ${map.lrs.length} × ${map.momentums.length} configs in one sweep`,
              font: {size: 13}},
      xaxis: {title: {text: "step size α (lr)"}, range: [0, Math.max(...map.lrs)]},
      yaxis: {title: {text: "momentum β"}, range: [0, 1]},
      legend: {orientation: "h", x: 0, y: -0.16}, showlegend: true,
    }, PLOT_CONFIG);
    mapChart.on("plotly_click", (event) => {
      const point = event.points && event.points[0];
      if (point) runCell(point.x, point.y);
    });
  }

  function drawSurface() {
    const {grid, surface} = view;
    Plotly.newPlot(runChart, [
      {type: "contour", x: grid.x, y: grid.y, z: grid.z.map((row) => row.map((value) => Math.log10(1 + value))),
       ncontours: 20, showscale: false, hoverinfo: "skip",
       colorscale: [[0, "#ffffff"], [0.5, "#e4ebf2"], [1, "#bccbdb"]], line: {color: "rgba(60, 80, 100, 0.35)"}},
      {type: "scatter", mode: "lines+markers", x: [], y: [], name: "momentum", meta: "theory-trajectory",
       line: {color: "#ff7f0e", width: 2}, marker: {size: 4}},
    ], {
      font: FONT, margin: {l: 45, r: 10, t: 36, b: 40}, showlegend: false,
      title: {text: "Click a cell of the map", font: {size: 13}},
      xaxis: {title: {text: "x"}, range: surface.bounds[0]}, yaxis: {title: {text: "y"}, range: surface.bounds[1]},
    }, PLOT_CONFIG);
  }

  async function runCell(lr, momentum) {
    clearInterval(view.timer);
    const mine = ++view.sequence;
    Plotly.restyle(mapChart, {x: [[lr]], y: [[momentum]]}, [3]);
    say(`running α = ${short(lr)}, β = ${short(momentum)}…`);
    let answer;
    try {
      answer = await getJson("/api/run", {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({surface: view.map.surface, steps: STEPS,
                              optimizers: [{name: "momentum", hyperparameters: {lr, momentum}}]}),
      });
    } catch (error) {
      say(`The run failed: ${error.message}`, true);
      return;
    }
    if (mine !== view.sequence) return;
    const result = answer.runs[0];
    const xs = result.path.map((point) => point[0]);
    const ys = result.path.map((point) => point[1]);
    const column = view.map.lrs.reduce((best, value, index, all) =>
      (Math.abs(value - lr) < Math.abs(all[best] - lr) ? index : best), 0);
    const row = view.map.momentums.reduce((best, value, index, all) =>
      (Math.abs(value - momentum) < Math.abs(all[best] - momentum) ? index : best), 0);
    const measured = view.map.rate[row][column];
    const growth = result.loss[result.loss.length - 1] / result.loss[0];
    const verdict = measured === null || growth > 1
      ? `diverges (f × ${growth.toExponential(1)} after ${result.steps} steps)`
      : `converges at rate ${short(measured)} per step (f × ${growth.toExponential(1)} after ${result.steps} steps)`;
    Plotly.relayout(runChart, {"title.text": `α = ${short(lr)}, β = ${short(momentum)}: ${verdict}`});
    let shown = 1;
    document.body.dataset.theoryBusy = "true";
    view.timer = setInterval(() => {
      shown += 1;
      Plotly.restyle(runChart, {x: [xs.slice(0, shown)], y: [ys.slice(0, shown)]}, [1]);
      document.body.dataset.theoryFrames = String(shown);
      if (shown >= xs.length) {
        clearInterval(view.timer);
        delete document.body.dataset.theoryBusy;
        view.runs += 1;
        document.body.dataset.theoryRuns = String(view.runs);
        const largest = Math.max(...view.map.curvatures);
        say(`α = ${short(lr)}, β = ${short(momentum)}: ${verdict}. Theory: stable iff 0 < αλ < 2(1 + β) for ` +
            `every λ (${view.map.curvatures.map(short).join(", ")}), i.e. α < 2(1 + β)/${short(largest)} = ` +
            `${short(2 * (1 + momentum) / largest)} at this β.`);
      }
    }, FRAME_MS);
  }

  async function open() {
    if (view.map) return;
    say("measuring 40,000 configurations…");
    try {
      const map = await getJson("/api/theory/momentum-map");
      const [grid, surfaces] = await Promise.all([
        getJson(`/api/surfaces/${map.surface}/grid?resolution=101`), getJson("/api/surfaces")]);
      view.grid = grid;
      view.surface = surfaces.find((surface) => surface.name === map.surface);
      view.map = map;
    } catch (error) {
      say(`Could not load the map: ${error.message}`, true);
      return;
    }
    drawMap();
    drawSurface();
    document.body.dataset.theoryReady = "true";
    say("Click a cell of the map.");
  }

  details.addEventListener("toggle", () => { if (details.open) open(); });
  if (location.hash.includes("theory")) details.open = true;
})();
