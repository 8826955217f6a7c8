"""The playground's FastAPI application: one page (`/`), its static files, Plotly.js, and a JSON API.

    GET  /api/surfaces             the test surfaces (`optimlab.lab.surfaces`)
    GET  /api/surfaces/{name}/grid f on a grid, for the contour plot
    GET  /api/optimizers           each optimizer's hyperparameters, defaults and slider ranges
    POST /api/run                  trajectories + per-step trace of several optimizers (`optimlab.lab.run`)

Everything runs on the lab's `run`, which evaluates the rules themselves: the page shows exactly the numbers
`optimlab trace` prints. Inputs are bounded (`models.MAX_*`), invalid ones get HTTP 422 naming the field, and
a diverging run is cut before its first non-finite value, so every answer is valid JSON.
"""

from __future__ import annotations

import math
import re
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ..lab import Run, run
from ..lab.style import color, label
from ..lab.surfaces import SURFACES, Surface
from ..rules import OPTIMIZERS, REGISTRY
from .models import (
    MAX_BODY_BYTES,
    MAX_TOTAL_STEPS,
    PLAYGROUND_LR,
    BadRequest,
    HyperparameterInfo,
    OptimizerInfo,
    RunRequest,
    RunResponse,
    RunResult,
    SurfaceGrid,
    SurfaceInfo,
    SurfaceName,
    control_for,
)


def create_app() -> FastAPI:
    """The playground application (serve it with uvicorn, or test it with FastAPI's `TestClient`)."""
    app = FastAPI(
        title="optimlab playground",
        version="1",
        description="Run SGD, Momentum, AdaGrad, RMSProp and Adam on test surfaces and get every step's "
                    "intermediate quantities — the numbers behind the page at `/`.",
    )
    page = (resources.files(__package__) / "static" / "index.html").read_text(encoding="utf-8")
    plotly_js = resources.files("plotly") / "package_data" / "plotly.min.js"

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly() -> FileResponse:
        """Plotly.js as bundled in the `plotly` Python package: the page needs no network."""
        return FileResponse(str(plotly_js), media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    app.add_exception_handler(RequestValidationError, validation_error)

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.mount("/static", StaticFiles(packages=[(__package__, "static")]), name="static")

    @app.get("/api/surfaces", response_model=list[SurfaceInfo], tags=["surfaces"])
    def surfaces() -> list[SurfaceInfo]:
        """The test surfaces: formula, default start, bounds (starts must lie inside), minimum."""
        return [surface_info(surface) for surface in SURFACES.values()]

    @app.get("/api/surfaces/{name}/grid", response_model=SurfaceGrid, tags=["surfaces"])
    def grid(name: Annotated[SurfaceName, Path(description="a surface name")],
             resolution: Annotated[int, Query(ge=11, le=301, description="samples per variable")] = 101,
             ) -> SurfaceGrid:
        """f sampled on a `resolution`-point grid per variable over the surface's bounds."""
        return surface_grid(SURFACES[name], resolution)

    @app.get("/api/optimizers", response_model=list[OptimizerInfo], tags=["optimizers"])
    def optimizers() -> list[OptimizerInfo]:
        """Each optimizer with its hyperparameters: kind, default, meaning and the page's slider range."""
        return [optimizer_info(name) for name in OPTIMIZERS]

    @app.post("/api/run", response_model=RunResponse, tags=["optimizers"],
              responses={400: {"model": BadRequest, "description": "the body could not be read as JSON text"},
                         413: {"model": BadRequest, "description": f"the body is over {MAX_BODY_BYTES} bytes"}})
    def run_optimizers(request: RunRequest) -> RunResponse:
        """Run each optimizer from the same start; return paths, losses and each step's trace.

        A run that diverges is cut before its first non-finite value and flagged (`diverged`, `message`).
        """
        return simulate(request)

    return app


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413 (the largest valid one is ~10 kB).

    A declared `Content-Length` is checked before anything is read; a body without one (chunked) is counted
    as it arrives and refused as soon as it passes the limit, so no request can make the server buffer more.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body over {self.limit} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await JSONResponse(status_code=413, content={"detail": too_large})(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(status_code=413, detail=too_large)  # FastAPI answers it as it is
            return message

        await self.app(scope, counted_receive, send)


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 answer, except that a non-finite number echoed from the input (`NaN` is valid Python
    JSON, not valid JSON) is written as a string, so that the answer itself is valid JSON."""
    return JSONResponse(status_code=422, content={"detail": _finite(jsonable_encoder(error.errors()))})


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def surface_info(surface: Surface) -> SurfaceInfo:
    """A surface as the API describes it."""
    return SurfaceInfo(name=surface.name, title=surface.title, formula=surface.formula,
                       description=surface.description, dim=surface.dim, start=list(surface.start),
                       bounds=[tuple(bound) for bound in surface.bounds],
                       minimum=None if surface.minimum is None else list(surface.minimum))


def surface_grid(surface: Surface, resolution: int) -> SurfaceGrid:
    """f on a regular grid over `surface.bounds` (rows are y for 2-D surfaces)."""
    axes = [np.linspace(low, high, resolution) for low, high in surface.bounds]
    if surface.dim == 1:
        values = surface.value(axes[0][:, None])
        return SurfaceGrid(name=surface.name, x=axes[0].tolist(), y=None, z=values.tolist())
    x, y = np.meshgrid(axes[0], axes[1])
    values = surface.value(np.stack([x, y], axis=-1))
    return SurfaceGrid(name=surface.name, x=axes[0].tolist(), y=axes[1].tolist(), z=values.tolist())


def optimizer_info(name: str) -> OptimizerInfo:
    """An optimizer's hyperparameters with defaults (its overrides applied) and the page's controls."""
    rule, overrides = OPTIMIZERS[name]
    hyperparameters = []
    for key, default in {**rule.hyperparameters, **overrides}.items():
        control = control_for(key, default)
        kind = "switch" if isinstance(default, bool) else "pair" if isinstance(default, tuple) else "real"
        hyperparameters.append(HyperparameterInfo(
            name=key, kind=kind, default=list(default) if isinstance(default, tuple) else default,
            description=control.description, low=control.low, high=control.high, scale=control.scale))
    entry = REGISTRY[name]
    return OptimizerInfo(name=name, title=label(name), color=color(name), rule=rule.name,
                         playground_lr=PLAYGROUND_LR.get(name, rule.hyperparameters["lr"]),
                         hyperparameters=hyperparameters, trace_labels=entry.all_trace_labels(),
                         trace_scalars=list(entry.trace_scalars))


def simulate(request: RunRequest) -> RunResponse:
    """Validate the start and every optimizer's hyperparameters (by its rule), then run them all.

    Raises `RequestValidationError` (HTTP 422) naming the field, before any optimizer runs.
    """
    total = request.steps * len(request.optimizers)
    if total > MAX_TOTAL_STEPS:
        raise _invalid(("body", "steps"), f"steps × optimizers = {request.steps} × {len(request.optimizers)} = "
                       f"{total} exceeds {MAX_TOTAL_STEPS}: ask for fewer steps or fewer optimizers", request.steps)
    surface = SURFACES[request.surface]
    start = _start(surface, request.start)
    given = []
    for index, settings in enumerate(request.optimizers):
        hyperparameters = settings.hyperparameters.model_dump(exclude_unset=True)
        rule, overrides = OPTIMIZERS[settings.name]
        try:
            rule.defaults(**{**overrides, **hyperparameters})
        except ValueError as error:
            named = re.match(r"Invalid (\w+)", str(error))
            location = ("body", "optimizers", index, "hyperparameters") + ((named.group(1),) if named else ())
            raise _invalid(location, str(error), hyperparameters) from None
        given.append(hyperparameters)
    runs = [run_result(run(surface, settings.name, hyperparameters, start, request.steps))
            for settings, hyperparameters in zip(request.optimizers, given, strict=True)]
    return RunResponse(surface=surface.name, start=start, runs=runs)


def run_result(result: Run) -> RunResult:
    """A lab `Run` as JSON-safe lists, cut before the first step at which any value is not finite."""
    # Per quantity, row t is True where step t made it non-finite (row 0 is the start: x and f only).
    nonfinite = {"x": ~np.isfinite(result.path).all(axis=-1), "f": ~np.isfinite(result.loss)}
    for name, values in result.trace.items():
        nonfinite[name] = np.concatenate([[False], ~np.isfinite(values).all(axis=-1)])
    broken = np.flatnonzero(np.logical_or.reduce(list(nonfinite.values())))
    kept = int(broken[0]) if broken.size else len(result.path)  # rows of path kept: x_0 .. x_{kept−1}
    steps = max(kept - 1, 0)
    message = None
    if broken.size:
        names = ", ".join(name for name, rows in nonfinite.items() if rows[kept])
        message = f"diverged at step {kept}: {names} became non-finite; shown up to step {steps}"
    hyperparameters = {name: list(value) if isinstance(value, tuple) else value
                       for name, value in result.hyperparameters.items()}
    return RunResult(name=result.optimizer, hyperparameters=hyperparameters,
                     path=result.path[:kept].tolist(), loss=result.loss[:kept].tolist(),
                     trace={name: values[:steps].tolist() for name, values in result.trace.items()},
                     steps=steps, diverged=bool(broken.size), message=message)


def _start(surface: Surface, start: list[float] | None) -> list[float]:
    if start is None:
        return list(surface.start)
    if len(start) != surface.dim:
        raise _invalid(("body", "start"), f"{surface.name} takes {surface.dim} coordinate(s), got {len(start)}",
                       start)
    for coordinate, (low, high) in zip(start, surface.bounds, strict=True):
        if not low <= coordinate <= high:
            box = " × ".join(f"[{low:g}, {high:g}]" for low, high in surface.bounds)
            raise _invalid(("body", "start"), f"start {start} lies outside {surface.name}'s bounds {box}", start)
    return [float(coordinate) for coordinate in start]


def _invalid(location: tuple[str | int, ...], message: str, given: Any) -> RequestValidationError:
    """A 422 answer in FastAPI's own format: `{"detail": [{"loc": [...], "msg": ..., ...}]}`."""
    return RequestValidationError([{"type": "value_error", "loc": location, "msg": message, "input": given}])
