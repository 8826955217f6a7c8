// optimlab playground: pick a surface, tick optimizers, click the plot to start there, watch them race.
//
// Every number comes from the server (POST /api/run), which runs the optimizers' own rules: this file only
// draws. Each surface comes with its own steps and every optimizer's default hyperparameters on it (the lr its
// lab sweep scores best, GET /api/surfaces), which the page takes whenever the surface changes. The settings
// live in the URL's hash (surface, steps, start, and each ticked optimizer's hyperparameters), so a link
// reproduces the picture; the hash is read into a Map, so no name in it can reach an object's prototype.
//
// Sections: controls · the URL · fetching (503: wait and retry) · running · drawing (contour, loss, trace) ·
// events. A new view draws from `state.response` in `drawRuns` and `selectStep`, like the two charts.
"use strict";

// Hyperparameters shown up front; the others sit under "more".
const PRIMARY = new Set(["lr", "momentum", "betas", "alpha", "eps", "eps_root"]);
const DEFAULT_TICKED = ["sgd", "momentum", "adagrad", "adam"];
const SLIDER_RESOLUTION = 1000;
// The contour plot's traces: the surface, its curve (1-D) or minimum (2-D), the start; then one per run,
// then the markers of the selected step.
const BASE_TRACES = 3;
// Longer paths are drawn as lines only: ten thousand SVG markers per optimizer would make the page crawl.
const MARKED_POINTS = 500;
const MAX_STEPS = 10000;
// The loss axis shows at most this many decade labels; a wider range labels every n-th decade.
const MAX_DECADE_TICKS = 8;
// How often a request the server answers 503 (busy) is retried, after its Retry-After.
const BUSY_RETRIES = 5;

const state = {
  surfaces: new Map(),   // name -> SurfaceInfo (with its steps and defaults)
  grids: new Map(),      // name -> SurfaceGrid
  optimizers: [],        // OptimizerInfo, in the API's order
  surface: "ellipse",
  start: null,
  steps: 30,
  ticked: new Set(DEFAULT_TICKED),
  values: {},            // optimizer name (from the API) -> {hyperparameter: value}
  response: null,        // the last RunResponse drawn
  drawn: [],             // per run of it: the points the charts show (`drawable`)
  axis: null,            // the loss chart's y-axis for it (`lossAxis`)
  step: 0,
  focus: null,           // index of the run the pointer is on
  animation: 0,          // id of the running animation (0: none)
  completedRuns: 0,
};

const $ = (selector) => document.querySelector(selector);

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

// Ten significant digits, as `optimlab trace` prints them (Python's "{:.10g}").
function formatNumber(value) {
  if (typeof value !== "number") return String(value);
  if (value === 0) return "0";
  const rounded = Number(value.toPrecision(10));
  const exponent = Math.floor(Math.log10(Math.abs(rounded)));
  if (exponent < -4 || exponent >= 10) {
    const [mantissa, power] = value.toExponential(9).split("e");
    const sign = power[0] === "-" ? "-" : "+";
    const digits = power.replace(/^[+-]/, "").padStart(2, "0");
    return `${mantissa.replace(/\.?0+$/, "")}e${sign}${digits}`;
  }
  return String(rounded);
}

function short(value) {
  return String(Number(value.toPrecision(4)));
}

// --- hyperparameter controls ------------------------------------------------------------------------------

function sliderPosition(control, value) {
  let fraction;
  if (control.scale === "log") {
    if (value <= 0) return 0;
    fraction = (Math.log10(value) - Math.log10(control.low)) / (Math.log10(control.high) - Math.log10(control.low));
  } else {
    fraction = (value - control.low) / (control.high - control.low);
  }
  return Math.round(Math.min(1, Math.max(0, fraction)) * SLIDER_RESOLUTION);
}

function sliderValue(control, position) {
  const fraction = position / SLIDER_RESOLUTION;
  if (control.scale === "log") {
    const exponent = Math.log10(control.low) + fraction * (Math.log10(control.high) - Math.log10(control.low));
    return Number((10 ** exponent).toPrecision(3));
  }
  return Number((control.low + fraction * (control.high - control.low)).toPrecision(4));
}

// One slider + number box; `read`/`write` get and set the value inside state.values.
function realControl(id, label, control, read, write) {
  const slider = element("input", {type: "range", id: `${id}-slider`, min: 0, max: SLIDER_RESOLUTION, step: 1,
                                   "aria-label": `${label} slider`});
  const box = element("input", {type: "number", id, step: "any", "aria-label": label});
  const sync = () => {
    slider.value = sliderPosition(control, read());
    box.value = read();
    box.classList.remove("invalid");
  };
  slider.addEventListener("input", () => {
    write(sliderValue(control, Number(slider.value)));
    box.value = read();
    box.classList.remove("invalid");
    schedule(false);
  });
  box.addEventListener("change", () => {
    const value = Number(box.value);
    if (box.value.trim() === "" || !Number.isFinite(value)) {
      box.classList.add("invalid");
      showStatus(`${label}: enter a number`, true);
      return;
    }
    box.classList.remove("invalid");
    write(value);
    slider.value = sliderPosition(control, value);
    schedule(false);
  });
  const row = element("label", {class: "knob", title: control.description, for: id},
                      element("span", {class: "knob-name"}, label), slider, box);
  return {row, sync};
}

function switchControl(id, label, control, read, write) {
  const box = element("input", {type: "checkbox", id});
  box.addEventListener("change", () => {
    write(box.checked);
    schedule(false);
  });
  const row = element("label", {class: "knob switch", title: control.description, for: id},
                      box, element("span", {class: "knob-name"}, label));
  return {row, sync: () => { box.checked = read(); }};
}

const syncs = [];

function buildOptimizer(info) {
  const values = () => state.values[info.name];  // replaced whenever the surface changes
  const tick = element("input", {type: "checkbox", id: `use-${info.name}`, "aria-label": `run ${info.title}`});
  const box = element("details", {class: "optimizer", "data-optimizer": info.name},
                      element("summary", {}, tick, element("span", {class: "swatch", style: `background:${info.color}`}),
                              element("span", {class: "optimizer-title"}, info.title)));
  tick.addEventListener("change", () => {
    if (tick.checked) state.ticked.add(info.name); else state.ticked.delete(info.name);
    box.open = tick.checked;
    schedule(true);
  });
  syncs.push(() => { tick.checked = state.ticked.has(info.name); box.open = tick.checked; });
  const primary = element("div", {class: "knobs"});
  const extra = element("div", {class: "knobs"});
  for (const hp of info.hyperparameters) {
    const target = PRIMARY.has(hp.name) ? primary : extra;
    const id = `${info.name}-${hp.name}`;
    const controls = [];
    if (hp.kind === "pair") {
      hp.default.forEach((_, index) => controls.push(realControl(
        `${id}-${index}`, `${hp.name === "betas" ? "beta" : `${hp.name} `}${index + 1}`, hp,
        () => values()[hp.name][index], (value) => { values()[hp.name][index] = value; })));
    } else if (hp.kind === "switch") {
      controls.push(switchControl(id, hp.name, hp, () => values()[hp.name], (value) => { values()[hp.name] = value; }));
    } else {
      controls.push(realControl(id, hp.name, hp, () => values()[hp.name], (value) => { values()[hp.name] = value; }));
    }
    for (const control of controls) {
      target.append(control.row);
      syncs.push(control.sync);
    }
  }
  box.append(primary, element("details", {class: "more"}, element("summary", {}, "more"), extra));
  return box;
}

// An optimizer's hyperparameters on a surface: the surface's defaults for it, PyTorch's for any it lacks.
function defaultsOn(surface, info) {
  const given = Object.hasOwn(surface.defaults, info.name) ? surface.defaults[info.name] : {};
  const values = {};
  for (const hp of info.hyperparameters) {
    const value = Object.hasOwn(given, hp.name) ? given[hp.name] : hp.default;
    values[hp.name] = Array.isArray(value) ? [...value] : value;
  }
  return values;
}

// Switch to surface `name`: its default start and steps, and every optimizer's defaults on it.
function useSurface(name) {
  const surface = state.surfaces.get(name);
  state.surface = name;
  state.start = [...surface.start];
  state.steps = surface.steps;
  for (const info of state.optimizers) state.values[info.name] = defaultsOn(surface, info);
}

function syncControls() {
  $("#surface").value = state.surface;
  $("#steps").value = state.steps;
  $("#steps").classList.remove("invalid");
  const surface = state.surfaces.get(state.surface);
  $("#formula").textContent = surface.formula;
  $("#surface-description").textContent = surface.description;
  $("#start-text").textContent = `(${state.start.map(short).join(", ")})`;
  for (const sync of syncs) sync();
}

// --- the URL: #surface=ellipse&steps=30&start=-7,2&sgd=lr:0.95&adam=lr:0.3,betas:0.9;0.999 -------------

function encodeValue(value) {
  return Array.isArray(value) ? value.join(";") : String(value);
}

function saveHash() {
  const parts = [`surface=${state.surface}`, `steps=${state.steps}`, `start=${state.start.join(",")}`];
  for (const info of state.optimizers) {
    if (!state.ticked.has(info.name)) continue;
    const changed = info.hyperparameters
      .filter((hp) => hp.name === "lr" || encodeValue(hp.default) !== encodeValue(state.values[info.name][hp.name]))
      .map((hp) => `${hp.name}:${encodeValue(state.values[info.name][hp.name])}`);
    parts.push(`${info.name}=${changed.join(",")}`);
  }
  history.replaceState(null, "", `#${parts.join("&")}`);
}

function parseNumbers(text, count) {
  const numbers = text.split(/[,;]/).map(Number);
  return numbers.length === count && numbers.every(Number.isFinite) ? numbers : null;
}

function decode(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return "";  // a malformed %-escape: ignored like any other unreadable value
  }
}

// The hash as a Map from name to text (a Map: "toString" or "__proto__" are names like any other).
function readHash() {
  const given = new Map();
  for (const part of location.hash.slice(1).split("&")) {
    const at = part.indexOf("=");
    if (at < 0) given.set(decode(part), "");  // "#sgd&adam" ticks the two at their defaults
    else if (at > 0) given.set(decode(part.slice(0, at)), decode(part.slice(at + 1)));
  }
  return given;
}

// The state a link describes: its surface (else the current one) with that surface's defaults, then the
// link's steps, start and hyperparameters over them; anything unreadable is ignored.
function loadHash() {
  const given = readHash();
  useSurface(state.surfaces.has(given.get("surface")) ? given.get("surface") : state.surface);
  const surface = state.surfaces.get(state.surface);
  const start = given.has("start") && parseNumbers(given.get("start"), surface.dim);
  if (start && start.every((value, axis) => surface.bounds[axis][0] <= value && value <= surface.bounds[axis][1])) {
    state.start = start;
  }
  const steps = Number(given.get("steps"));
  if (Number.isInteger(steps) && steps >= 1) state.steps = Math.min(steps, MAX_STEPS);
  const named = state.optimizers.filter((info) => given.has(info.name));
  if (named.length) state.ticked = new Set(named.map((info) => info.name));
  for (const info of named) {
    for (const item of given.get(info.name).split(",")) {
      const [name, text = ""] = item.split(":");
      const hp = info.hyperparameters.find((candidate) => candidate.name === name);
      if (!hp) continue;
      if (hp.kind === "switch" && (text === "true" || text === "false")) {
        state.values[info.name][name] = text === "true";
      } else if (hp.kind === "pair") {
        const pair = parseNumbers(text, hp.default.length);
        if (pair) state.values[info.name][name] = pair;
      } else if (hp.kind === "real" && text !== "" && Number.isFinite(Number(text))) {
        state.values[info.name][name] = Number(text);
      }
    }
  }
}

// --- fetching ---------------------------------------------------------------------------------------------

function wait(seconds, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, seconds * 1000);
    if (signal) {
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(new DOMException("aborted", "AbortError"));
      }, {once: true});
    }
  });
}

// fetch, waiting out a 503 (the server's bound on runs in flight) for as long as its Retry-After asks.
async function fetchAnswer(url, options = {}) {
  for (let attempt = 1; ; attempt++) {
    const response = await fetch(url, options);
    if (response.status !== 503 || attempt > BUSY_RETRIES) return response;
    const seconds = Number(response.headers.get("Retry-After")) || 1;
    showStatus(`The server is busy: trying again in ${seconds} s (${attempt} of ${BUSY_RETRIES})`, false);
    await wait(seconds, options.signal);
  }
}

async function fetchJSON(url) {
  const response = await fetchAnswer(url);
  if (!response.ok) throw new Error(`${url} answered ${response.status}`);
  return response.json();
}

// --- running ----------------------------------------------------------------------------------------------

let pending = null;
let controller = null;
let sequence = 0;

function schedule(animate) {
  clearTimeout(pending);
  pending = setTimeout(() => run(animate), animate ? 0 : 120);
}

function requestBody() {
  return {
    surface: state.surface, start: state.start, steps: state.steps,
    optimizers: state.optimizers.filter((info) => state.ticked.has(info.name))
      .map((info) => ({name: info.name, hyperparameters: state.values[info.name]})),
  };
}

async function run(animate) {
  saveHash();
  syncControls();
  const body = requestBody();
  stopAnimation();
  if (!body.optimizers.length) {
    state.response = null;
    state.drawn = [];
    state.axis = lossAxis([]);
    drawRuns();
    showStatus("Tick an optimizer to run it.", false);
    return;
  }
  if (controller) controller.abort();
  controller = new AbortController();
  const mine = ++sequence;
  document.body.dataset.busy = "true";
  showStatus("running…", false);
  let response;
  let answer;
  try {
    response = await fetchAnswer("/api/run", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
      signal: controller.signal,
    });
    answer = await response.json();
  } catch (error) {
    if (error.name !== "AbortError") showStatus(`The server did not answer: ${error.message}`, true);
    return;
  } finally {
    if (mine === sequence) delete document.body.dataset.busy;
  }
  if (mine !== sequence) return;
  if (!response.ok) {
    showErrors(answer.detail, body);
    return;
  }
  state.response = answer;
  state.axis = lossAxis(answer.runs);
  state.drawn = answer.runs.map((result) => drawable(result, state.axis));
  drawRuns();
  if (animate) playAnimation(); else finishRun();
}

// The server's 422 as lines such as "Adam, lr: Invalid lr: -1.0 (must be a finite number >= 0)".
function showErrors(detail, body) {
  const lines = (Array.isArray(detail) ? detail : [{loc: [], msg: String(detail)}]).map((error) => {
    const loc = error.loc || [];
    const index = loc.indexOf("optimizers");
    const optimizer = index >= 0 ? body.optimizers[loc[index + 1]] : undefined;
    const where = optimizer
      ? `${titleOf(optimizer.name)}, ${loc.slice(index + 2)
        .filter((part) => part !== "hyperparameters" && part !== optimizer.name).join(".")}`
      : loc.filter((part) => part !== "body").join(".");
    return `${where || "request"}: ${error.msg}`;
  });
  showStatus(lines.join("\n"), true);
}

function showStatus(text, isError) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function titleOf(name) {
  const info = state.optimizers.find((candidate) => candidate.name === name);
  return info ? info.title : name;
}

function colorOf(name) {
  const info = state.optimizers.find((candidate) => candidate.name === name);
  return info ? info.color : "#333";
}

function summary() {
  const runs = state.response.runs;
  const names = runs.map((result) => titleOf(result.name)).join(", ");
  const lines = [`${names} · ${state.steps} steps from (${state.response.start.map(short).join(", ")})`];
  for (const result of runs) if (result.diverged) lines.push(`${titleOf(result.name)} ${result.message}`);
  return lines.join("\n");
}

// --- drawing ----------------------------------------------------------------------------------------------

const PLOT_CONFIG = {displayModeBar: false, responsive: true};
const FONT = {family: "system-ui, sans-serif", size: 12};

function displayLevels(values) {
  // log10(1 + f − min f): contours stay readable where f spans decades (Rosenbrock, Beale).
  let lowest = Infinity;
  for (const value of values.flat()) lowest = Math.min(lowest, value);
  const level = (value) => Math.log10(1 + value - lowest);
  return values.map((row) => (Array.isArray(row) ? row.map(level) : level(row)));
}

function yRange(surface, grid) {
  if (surface.dim === 2) return surface.bounds[1];
  const low = Math.min(...grid.z);
  const high = Math.max(...grid.z);
  const pad = 0.06 * (high - low || 1);
  return [low - pad, high + pad];
}

function drawSurface() {
  const surface = state.surfaces.get(state.surface);
  const grid = state.grids.get(state.surface);
  const [yLow, yHigh] = yRange(surface, grid);
  const traces = [];
  if (surface.dim === 2) {
    traces.push({
      type: "contour", x: grid.x, y: grid.y, z: displayLevels(grid.z), customdata: grid.z, ncontours: 24,
      colorscale: [[0, "#ffffff"], [0.5, "#e4ebf2"], [1, "#bccbdb"]], showscale: false,
      line: {color: "rgba(60, 80, 100, 0.35)", width: 0.6},
      hovertemplate: "x = %{x:.3f}, y = %{y:.3f}<br>f = %{customdata:.4g}<extra>click: start here</extra>",
    });
    traces.push({
      type: "scatter", mode: "markers", x: surface.minimum ? [surface.minimum[0]] : [],
      y: surface.minimum ? [surface.minimum[1]] : [], marker: {symbol: "star", size: 13, color: "#444"},
      hovertemplate: "minimum<extra></extra>", showlegend: false,
    });
  } else {
    traces.push({
      type: "heatmap", x: grid.x, y: [yLow, yHigh], z: [displayLevels(grid.z), displayLevels(grid.z)],
      colorscale: [[0, "#fdfdfd"], [1, "#dbe6f0"]], showscale: false, customdata: [grid.z, grid.z],
      hovertemplate: "x = %{x:.3f}<br>f = %{customdata:.4g}<extra>click: start here</extra>",
    });
    traces.push({type: "scatter", mode: "lines", x: grid.x, y: grid.z, line: {color: "#555", width: 1.5},
                 hoverinfo: "skip", showlegend: false});
  }
  traces.push({type: "scatter", mode: "markers", x: [], y: [], name: "start", showlegend: false,
               marker: {symbol: "circle-open", size: 14, color: "#111", line: {width: 2.5}}, hoverinfo: "skip"});
  const layout = {
    font: FONT, margin: {l: 48, r: 12, t: 34, b: 40}, dragmode: false, hovermode: "closest", showlegend: false,
    // the title alone: Beale's formula does not fit a narrow chart (the controls show it)
    title: {text: surface.title, font: {size: 13}, x: 0.02},
    xaxis: {range: surface.bounds[0], fixedrange: true, title: {text: "x"}, zeroline: false},
    yaxis: {range: [yLow, yHigh], fixedrange: true, title: {text: surface.dim === 2 ? "y" : "f(x)"},
            zeroline: false},
    plot_bgcolor: "#fafafa",
  };
  Plotly.react($("#contour"), traces, layout, PLOT_CONFIG);
  drawStart();
}

function pointOf(result, t) {
  const point = result.path[t];
  return state.surfaces.get(state.surface).dim === 2 ? point : [point[0], result.loss[t]];
}

function drawStart() {
  const grid = state.grids.get(state.surface);
  const [x, y] = state.start.length === 2 ? state.start : [state.start[0], interpolate(grid.x, grid.z, state.start[0])];
  Plotly.restyle($("#contour"), {x: [[x]], y: [[y]]}, [2]);
}

// Linear interpolation of the samples (xs, ys) at x, for the 1-D start marker.
function interpolate(xs, ys, x) {
  const index = Math.min(xs.length - 2, Math.max(0, xs.findIndex((sample) => sample >= x) - 1));
  const fraction = (x - xs[index]) / (xs[index + 1] - xs[index]);
  return ys[index] + fraction * (ys[index + 1] - ys[index]);
}

// `points` up to where they leave `box` ([low, high] per axis), the crossing drawn on its edge: a diverging
// run's 1e200 would otherwise reach the SVG, which cannot draw it. Returns the points and whether it cut.
function clip(points, box) {
  const shown = [];
  for (const point of points) {
    if (point.every((value, axis) => box[axis][0] <= value && value <= box[axis][1])) {
      shown.push(point);
      continue;
    }
    if (shown.length) {
      const from = shown[shown.length - 1];
      let fraction = 1;
      point.forEach((value, axis) => {
        const [low, high] = box[axis];
        if (value > high) fraction = Math.min(fraction, (high - from[axis]) / (value - from[axis]));
        if (value < low) fraction = Math.min(fraction, (low - from[axis]) / (value - from[axis]));
      });
      shown.push(from.map((value, axis) => value + fraction * (point[axis] - value)));
    }
    return {points: shown, cut: true};
  }
  return {points: shown, cut: false};
}

// The contour plot's box widened by its own size on each side, as the lab's sweep scores a path: a path is
// drawn until it leaves it (well off the plot).
function pathBox() {
  const surface = state.surfaces.get(state.surface);
  const shown = surface.dim === 2 ? surface.bounds : [surface.bounds[0], yRange(surface, state.grids.get(state.surface))];
  return shown.map(([low, high]) => [low - (high - low), high + (high - low)]);
}

// The loss axis: logarithmic where every f is positive, spanning the runs that did not diverge and every
// start — a run that diverges leaves it, is cut at its edge and marked ×, and the others stay readable —
// with at most MAX_DECADE_TICKS decade labels.
function lossAxis(runs) {
  let low = Infinity;
  let high = -Infinity;
  let positive = runs.length > 0;
  for (const result of runs) {
    result.loss.forEach((value, t) => {
      if (value <= 0) positive = false;
      if (t === 0 || !result.diverged) {
        low = Math.min(low, value);
        high = Math.max(high, value);
      }
    });
  }
  if (!runs.length) return {type: "linear", range: [0, 1]};
  if (positive) {
    let [bottom, top] = [Math.log10(low), Math.log10(high)];
    if (top - bottom < 1) [bottom, top] = [(bottom + top) / 2 - 0.5, (bottom + top) / 2 + 0.5];
    const decades = top - bottom;
    const pad = 0.04 * decades;
    return {type: "log", range: [bottom - pad, top + pad],
            dtick: decades >= 2 ? Math.ceil(decades / MAX_DECADE_TICKS) : "D2"};  // D2: 1, 2, 5 per decade
  }
  const pad = 0.06 * (high - low || Math.abs(high) || 1);
  return {type: "linear", range: [low - pad, high + pad]};
}

// What the charts show of one run: its path clipped to `pathBox`, its loss clipped to the loss axis (in the
// axis's own units, so on a log axis the edge is crossed where the line crosses it).
function drawable(result, axis) {
  const scale = axis.type === "log" ? Math.log10 : (value) => value;
  const loss = clip(result.loss.map((value, t) => [t, scale(value)]), [[0, Infinity], axis.range]);
  const path = clip(result.path.map((_, t) => pointOf(result, t)), pathBox());
  return {
    path: path.points,
    loss: loss.points.map(([t, value]) => [t, axis.type === "log" ? 10 ** value : value]),
    // marked × where it ends: it diverged, or it left the loss axis
    marked: result.diverged || loss.cut,
  };
}

function runTrace(index, upTo) {
  const result = state.response.runs[index];
  const title = titleOf(result.name);
  const shown = state.drawn[index].path.slice(0, upTo + 1);
  return {
    type: "scatter", mode: result.path.length > MARKED_POINTS ? "lines" : "lines+markers", meta: "trajectory",
    name: title, x: shown.map((point) => point[0]),
    y: shown.map((point) => point[1]), customdata: shown.map((_, t) => t),
    line: {color: colorOf(result.name), width: 2}, marker: {size: 5, color: colorOf(result.name)},
    hovertemplate: `${title} · t = %{customdata}<br>(%{x:.4g}, %{y:.4g})<extra></extra>`,
  };
}

function lossTrace(index, upTo) {
  const result = state.response.runs[index];
  const drawn = state.drawn[index];
  const title = titleOf(result.name);
  const shown = drawn.loss.filter(([t]) => Math.ceil(t) <= upTo);  // a crossing once its step is reached
  const ended = drawn.marked && shown.length === drawn.loss.length;
  const last = shown.length - 1;
  return {
    type: "scatter", mode: "lines+markers", meta: result.diverged ? "diverged" : "loss",
    name: result.diverged ? `${title} (diverged at step ${result.steps + 1})` : title,
    x: shown.map(([t]) => t), y: shown.map(([, value]) => value),
    line: {color: colorOf(result.name), width: 2},
    marker: {color: colorOf(result.name), symbol: "x", size: shown.map((_, i) => (ended && i === last ? 11 : 0))},
    hovertemplate: `${title} · t = %{x:.4~f}<br>f = %{y:.6g}<extra></extra>`,
  };
}

function drawRuns() {
  const contour = $("#contour");
  const keep = BASE_TRACES;
  const runs = state.response ? state.response.runs : [];
  if (contour.data.length > keep) {
    Plotly.deleteTraces(contour, contour.data.slice(keep).map((_, index) => keep + index));
  }
  drawStart();
  Plotly.addTraces(contour, [...runs.map((_, index) => runTrace(index, 0)), selectedTrace()]);
  Plotly.react($("#loss"), runs.map((_, index) => lossTrace(index, 0)), lossLayout(state.axis), PLOT_CONFIG);
  const slider = $("#step");
  slider.max = Math.max(0, ...runs.map((result) => result.steps));
}

function lossLayout(axis) {
  return {
    font: FONT, margin: {l: 60, r: 12, t: 34, b: 40}, dragmode: false, hovermode: "closest",
    title: {text: "f(x_t) against step t", font: {size: 13}, x: 0.02},
    xaxis: {range: [0, state.steps], title: {text: "step t"}, fixedrange: true, zeroline: false},
    yaxis: {type: axis.type, range: axis.range, title: {text: "f(x_t)"}, fixedrange: true,
            exponentformat: "power", dtick: axis.dtick},
    legend: {x: 1, xanchor: "right", y: 1, bgcolor: "rgba(255,255,255,0.8)"}, plot_bgcolor: "#fafafa",
    shapes: [],
  };
}

function selectedTrace() {
  return {type: "scatter", mode: "markers", x: [], y: [], hoverinfo: "skip", showlegend: false,
          marker: {symbol: "circle-open", size: 15, line: {width: 3}, color: []}};
}

function showUpTo(t) {
  const runs = state.response.runs;
  const indices = runs.map((_, index) => BASE_TRACES + index);
  const paths = runs.map((result, index) => runTrace(index, Math.min(t, result.steps)));
  Plotly.restyle($("#contour"), {x: paths.map((trace) => trace.x), y: paths.map((trace) => trace.y),
                                 customdata: paths.map((trace) => trace.customdata)}, indices);
  const losses = runs.map((result, index) => lossTrace(index, Math.min(t, result.steps)));
  Plotly.restyle($("#loss"), {x: losses.map((trace) => trace.x), y: losses.map((trace) => trace.y),
                              "marker.size": losses.map((trace) => trace.marker.size)},
                 runs.map((_, index) => index));
}

function selectStep(t, focus = state.focus) {
  if (!state.response) return;
  const runs = state.response.runs;
  state.step = t;
  state.focus = focus;
  $("#step").value = t;
  $("#step-text").textContent = `t = ${t}`;
  const points = state.drawn.map((drawn) => drawn.path[Math.min(t, drawn.path.length - 1)]);
  Plotly.restyle($("#contour"), {
    x: [points.map((point) => point[0])], y: [points.map((point) => point[1])],
    "marker.color": [runs.map((result) => colorOf(result.name))],
  }, [BASE_TRACES + runs.length]);
  Plotly.relayout($("#loss"), {shapes: [{type: "line", xref: "x", yref: "paper", x0: t, x1: t, y0: 0, y1: 1,
                                         line: {color: "#888", width: 1, dash: "dot"}}]});
  drawTrace();
}

function drawTrace() {
  const panel = $("#trace");
  panel.replaceChildren();
  const dim = state.surfaces.get(state.surface).dim;
  const components = dim === 2 ? ["x", "y"] : ["x"];
  state.response.runs.forEach((result, index) => {
    const t = Math.min(state.step, result.steps);
    const rows = [];
    if (t >= 1) {
      // headers and per-step scalars (shown once) come from the API, as `optimlab trace` names them
      const info = state.optimizers.find((candidate) => candidate.name === result.name);
      for (const [name, values] of Object.entries(result.trace)) {
        const scalar = info.trace_scalars.includes(name);
        rows.push([info.trace_labels[name] || name, scalar ? values[t - 1].slice(0, 1) : values[t - 1]]);
      }
    }
    rows.push([t === 0 ? "x₀ (start)" : "x_t", result.path[t]]);
    rows.push(["f(x_t)", [result.loss[t]]]);
    const table = element("table", {},
      element("thead", {}, element("tr", {}, element("th", {}, `t = ${t}`),
                                   ...components.map((component) => element("th", {}, component)))),
      element("tbody", {}, ...rows.map(([label, values]) => element("tr", {}, element("th", {}, label),
        ...values.map((value) => element("td", {class: "mono", colspan: values.length === 1 ? components.length : 1},
                                         formatNumber(value)))))));
    const lr = result.hyperparameters.lr;
    const note = result.diverged && state.step > result.steps ? element("p", {class: "warn"}, result.message) : "";
    const card = element("div", {class: `card${index === state.focus ? " focus" : ""}`,
                                 style: `border-top-color:${colorOf(result.name)}`, "data-optimizer": result.name},
                         element("h3", {}, titleOf(result.name), element("small", {}, ` lr = ${short(lr)}`)),
                         table, note);
    panel.append(card);
  });
}

function stopAnimation() {
  state.animation = 0;
  delete document.body.dataset.animating;
}

function playAnimation() {
  const steps = Math.max(0, ...state.response.runs.map((result) => result.steps));
  const duration = Math.min(3000, Math.max(800, steps * 50));
  const id = (state.animation = performance.now());
  document.body.dataset.animating = "true";
  const frame = (now) => {
    if (state.animation !== id) return;
    const t = Math.min(steps, Math.max(0, Math.ceil(((now - id) / duration) * steps)));
    showUpTo(t);
    selectStep(t);
    if (t < steps) requestAnimationFrame(frame); else finishRun();
  };
  requestAnimationFrame(frame);
}

function finishRun() {
  stopAnimation();
  const steps = Math.max(0, ...state.response.runs.map((result) => result.steps));
  showUpTo(steps);
  selectStep(steps);
  showStatus(summary(), state.response.runs.some((result) => result.diverged));
  document.body.dataset.runs = String(++state.completedRuns);
}

// --- events -----------------------------------------------------------------------------------------------

// The run under the pointer, as [run index, step t], or null when it is not on a trajectory.
function runPoint(event) {
  const point = event.points && event.points[0];
  if (!point || !state.response) return null;
  const index = point.curveNumber - BASE_TRACES;
  return index >= 0 && index < state.response.runs.length ? [index, point.pointIndex] : null;
}

function startFromClick(event) {
  const contour = $("#contour");
  const area = contour.querySelector(".nsewdrag").getBoundingClientRect();
  const surface = state.surfaces.get(state.surface);
  const mouse = event.event;
  const [xLow, xHigh] = surface.bounds[0];
  const fraction = (mouse.clientX - area.left) / area.width;
  const x = Number(Math.min(xHigh, Math.max(xLow, xLow + fraction * (xHigh - xLow))).toPrecision(4));
  if (surface.dim === 1) {
    state.start = [x];
  } else {
    const [yLow, yHigh] = surface.bounds[1];
    const yFraction = (mouse.clientY - area.top) / area.height;
    state.start = [x, Number(Math.min(yHigh, Math.max(yLow, yHigh - yFraction * (yHigh - yLow))).toPrecision(4))];
  }
  schedule(true);
}

// Draw the current surface, fetching its grid the first time.
async function showSurface() {
  const name = state.surface;
  if (!state.grids.has(name)) state.grids.set(name, await fetchJSON(`/api/surfaces/${encodeURIComponent(name)}/grid`));
  drawSurface();
}

async function main() {
  const [surfaces, optimizers] = await Promise.all([fetchJSON("/api/surfaces"), fetchJSON("/api/optimizers")]);
  for (const surface of surfaces) {
    state.surfaces.set(surface.name, surface);
    $("#surface").append(element("option", {value: surface.name}, surface.title));
  }
  state.optimizers = optimizers;
  for (const info of optimizers) $("#optimizers").append(buildOptimizer(info));
  if (!state.surfaces.has(state.surface)) state.surface = surfaces[0].name;
  loadHash();
  await showSurface();
  Plotly.newPlot($("#loss"), [], lossLayout(lossAxis([])), PLOT_CONFIG);

  $("#surface").addEventListener("change", async (event) => {
    useSurface(event.target.value);
    try {
      await showSurface();
    } catch (error) {
      showStatus(`Could not load the surface: ${error.message}`, true);
      return;
    }
    schedule(true);
  });
  $("#steps").addEventListener("change", (event) => {
    const box = event.target;
    const steps = Number(box.value);
    if (box.value.trim() === "" || !Number.isInteger(steps) || steps < 1 || steps > MAX_STEPS) {
      box.classList.add("invalid");
      showStatus(`Steps: enter a whole number from 1 to ${MAX_STEPS} (the charts show the last run)`, true);
      return;
    }
    state.steps = steps;
    schedule(true);
  });
  $("#reset-start").addEventListener("click", () => {
    state.start = [...state.surfaces.get(state.surface).start];
    schedule(true);
  });
  $("#replay").addEventListener("click", () => { if (state.response) playAnimation(); });
  $("#step").addEventListener("input", (event) => {
    if (state.animation) finishRun();
    selectStep(Number(event.target.value));
  });
  $("#share").addEventListener("click", async () => {
    saveHash();
    try {
      await navigator.clipboard.writeText(location.href);
      $("#share").textContent = "copied";
    } catch {
      window.prompt("Copy this link:", location.href);
    }
    setTimeout(() => { $("#share").textContent = "copy link"; }, 1500);
  });
  const contour = $("#contour");
  contour.on("plotly_hover", (event) => {
    const hit = runPoint(event);
    if (hit && !state.animation) selectStep(hit[1], hit[0]);
  });
  contour.on("plotly_click", (event) => {
    const hit = runPoint(event);
    if (!hit) {
      startFromClick(event);
      return;
    }
    if (state.animation) finishRun();
    selectStep(hit[1], hit[0]);
  });
  const loss = $("#loss");
  loss.on("plotly_hover", (event) => {
    const point = event.points && event.points[0];
    // a run's crossing of the axis's edge lies between two steps: it belongs to the later one
    if (point && state.response && !state.animation) selectStep(Math.ceil(point.x), point.curveNumber);
  });
  window.addEventListener("hashchange", async () => {
    loadHash();
    try {
      await showSurface();
    } catch (error) {
      showStatus(`Could not load the surface: ${error.message}`, true);
      return;
    }
    schedule(true);
  });
  schedule(true);
}

main().catch((error) => showStatus(`Could not start the playground: ${error.message}`, true));
