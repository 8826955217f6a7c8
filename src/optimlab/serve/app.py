"""The playground's FastAPI application: one page (`/`), its static files, Plotly.js, and a JSON API.

    GET  /api/surfaces             the test surfaces (`optimlab.lab.surfaces`), each with every optimizer's
                                   default hyperparameters on it (`optimlab.lab.defaults`)
    GET  /api/surfaces/{name}/grid f on a grid, for the contour plot
    GET  /api/optimizers           each optimizer's hyperparameters, defaults and slider ranges
    POST /api/run                  trajectories + per-step trace of several optimizers (`optimlab.lab.run`)
    GET  /api/theory/momentum-map  the heavy ball's (α, β) map on the ellipse (`serve.theory`)

Everything runs on the lab's `run`, which evaluates the rules themselves: the page shows exactly the numbers
`optimlab trace` prints. Inputs are bounded (`models.MAX_*`), invalid ones get HTTP 422 naming the field, and
a diverging run is cut before its first non-finite value, so every answer is valid JSON.

No body makes it answer 500: a body nested too deeply for Python's parser, or holding a lone surrogate, is a
422 like any other invalid one. The guards (`guards.py`) refuse a foreign Host header (400), a body over
`MAX_BODY_BYTES` (413) or too slow (408), and more than `MAX_RUNS_IN_FLIGHT` runs at once (503, Retry-After);
`server.py` adds the connection timeouts. Runs and grids are computed in worker processes (`workers.py`), so the
event loop answers everything else at once however busy they are.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..lab import Run, run
from ..lab.defaults import steps_for, surface_defaults
from ..lab.paths import check_start
from ..lab.style import color, label
from ..lab.surfaces import SURFACES, Surface
from ..rules import OPTIMIZERS, REGISTRY
from ..tracing import divergence
from .guards import BodyLimit, HostCheck, RunLimit
from .models import (
    BODY_TIMEOUT,
    MAX_BODY_BYTES,
    MAX_RUNS_IN_FLIGHT,
    MAX_TOTAL_STEPS,
    BadRequest,
    Busy,
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
from .theory import add_theory_routes
from .workers import WorkerPool


def create_app(check_host: bool = True, max_runs_in_flight: int = MAX_RUNS_IN_FLIGHT,
               body_timeout: float = BODY_TIMEOUT) -> FastAPI:
    """The playground application (serve it with `server.playground_server`, or test it with `TestClient`).

    With `check_host` it answers only requests whose Host header names this machine (`guards.loopback_host`):
    right for a server bound to loopback; `optimlab serve --host` turns it off for any other address. At most
    `max_runs_in_flight` runs or grids are computed at once; more get 503 with Retry-After. A body must arrive
    within `body_timeout` seconds (else 408).
    """
    workers = WorkerPool(max_runs_in_flight)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workers.start()
        yield
        workers.shutdown()

    app = FastAPI(
        lifespan=lifespan,
        title="optimlab playground",
        version="1",
        description="Run SGD, Momentum, AdaGrad, RMSProp and Adam on test surfaces and get every step's "
                    "intermediate quantities — the numbers behind the page at `/`.",
    )
    app.router.route_class = ParsedBodyRoute
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

    # Added inner first: a request meets HostCheck, then RunLimit, then BodyLimit.
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, timeout=body_timeout)
    app.add_middleware(RunLimit, limit=max_runs_in_flight,
                       paths=r"/api/run|/api/surfaces/[^/]+/grid|/api/theory/momentum-map")
    if check_host:
        app.add_middleware(HostCheck)
    app.mount("/static", StaticFiles(packages=[(__package__, "static")]), name="static")

    listed = [surface_info(surface) for surface in SURFACES.values()]  # the defaults' sweeps run here, once

    @app.get("/api/surfaces", response_model=list[SurfaceInfo], tags=["surfaces"])
    async def surfaces() -> list[SurfaceInfo]:
        """The test surfaces: formula, default start, bounds (starts must lie inside), minimum, and each
        optimizer's default hyperparameters on it (the lr its sweep scores best over `steps` steps)."""
        return listed

    @app.get("/api/surfaces/{name}/grid", response_model=SurfaceGrid, tags=["surfaces"],
             responses={503: {"model": Busy, "description": "too many runs in flight; retry after Retry-After"}})
    async def grid(name: Annotated[SurfaceName, Path(description="a surface name")],
                   resolution: Annotated[int, Query(ge=11, le=301, description="samples per variable")] = 101,
                   ) -> Response:
        """f sampled on a `resolution`-point grid per variable over the surface's bounds."""
        return Response(await workers.run(grid_json, name, resolution), media_type="application/json")

    @app.get("/api/optimizers", response_model=list[OptimizerInfo], tags=["optimizers"])
    def optimizers() -> list[OptimizerInfo]:
        """Each optimizer with its hyperparameters: kind, default, meaning and the page's slider range."""
        return [optimizer_info(name) for name in OPTIMIZERS]

    @app.post("/api/run", response_model=RunResponse, tags=["optimizers"],
              responses={400: {"model": BadRequest, "description": "the body could not be read as JSON text"},
                         408: {"model": BadRequest, "description": f"the body took over {BODY_TIMEOUT:g} s"},
                         413: {"model": BadRequest, "description": f"the body is over {MAX_BODY_BYTES} bytes"},
                         503: {"model": Busy, "description": "too many runs in flight; retry after Retry-After"}})
    async def run_optimizers(request: RunRequest) -> Response:
        """Run each optimizer from the same start; return paths, losses and each step's trace.

        A run that diverges is cut before its first non-finite value and flagged (`diverged`, `message`).
        """
        # Checked here (a 422 costs no worker); run and encoded to JSON in a worker process.
        return Response(await workers.run(run_json, plan(request)), media_type="application/json")

    add_theory_routes(app)
    return app


class ParsedBodyRoute(APIRoute):
    """A route whose JSON body, nested too deeply for Python's parser (~1000 levels), gets 422 saying so.

    FastAPI answers that `RecursionError` with a bare 400 "error parsing the body"; it is valid JSON, so it is
    an invalid request like any other.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_nesting(request: Request) -> Response:
            try:
                return await handle(request)
            except StarletteHTTPException as error:  # what FastAPI raises, the base of its own HTTPException
                if isinstance(error.__cause__, RecursionError):
                    raise _invalid(("body",), "JSON nested too deeply to read", None) from None
                raise

        return handle_nesting


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 answer, with what it echoes of the input made safe to write as JSON (`_echo`)."""
    return JSONResponse(status_code=422, content={"detail": _echo(error.errors())})


#: Containers nested deeper than this in an echoed input are written as "…" (a valid body nests 5 levels).
ECHO_DEPTH = 8


def _echo(value: Any, depth: int = 0) -> Any:
    """`value` as JSON can hold it: non-finite floats as strings (`NaN` is valid Python JSON, not valid JSON),
    lone surrogates escaped (UTF-8 cannot encode them), containers cut at `ECHO_DEPTH` (a deeply nested input
    would exhaust the recursion of any encoder), anything else as its `str`."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, (dict, list, tuple)) and depth >= ECHO_DEPTH:
        return "…"
    if isinstance(value, dict):
        return {_echo(str(key)): _echo(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_echo(item, depth + 1) for item in value]
    return _echo(str(value))


def surface_info(surface: Surface) -> SurfaceInfo:
    """A surface as the API describes it."""
    defaults = {optimizer: {name: list(value) if isinstance(value, tuple) else value
                            for name, value in hyperparameters.items()}
                for optimizer, hyperparameters in surface_defaults(surface.name).items()}
    return SurfaceInfo(name=surface.name, title=surface.title, formula=surface.formula,
                       description=surface.description, dim=surface.dim, start=list(surface.start),
                       bounds=[tuple(bound) for bound in surface.bounds],
                       minimum=None if surface.minimum is None else list(surface.minimum),
                       steps=steps_for(surface.name), defaults=defaults)


def grid_json(name: str, resolution: int) -> str:
    """`surface_grid` of the surface called `name`, as JSON text (what a worker process sends back)."""
    return surface_grid(SURFACES[name], resolution).model_dump_json()


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
                         hyperparameters=hyperparameters, trace_labels=entry.all_trace_labels(),
                         trace_scalars=list(entry.trace_scalars))


@dataclass(frozen=True)
class RunPlan:
    """A checked `RunRequest`: the start filled in, each optimizer's name and the hyperparameters it was given."""

    surface: str
    start: list[float]
    steps: int
    optimizers: list[tuple[str, dict[str, Any]]]


def run_json(checked: RunPlan) -> str:
    """`execute(checked)` as JSON text (what a worker process sends back)."""
    return execute(checked).model_dump_json()


def execute(checked: RunPlan) -> RunResponse:
    """Run each optimizer of a checked request from its start, in order."""
    runs = [run_result(run(checked.surface, name, hyperparameters, checked.start, checked.steps))
            for name, hyperparameters in checked.optimizers]
    return RunResponse(surface=checked.surface, start=checked.start, runs=runs)


def plan(request: RunRequest) -> RunPlan:
    """Check the start and every optimizer's hyperparameters (by its rule), before anything runs.

    Raises `RequestValidationError` (HTTP 422) naming the field.
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
        given.append((settings.name, hyperparameters))
    return RunPlan(surface.name, start, request.steps, given)


def run_result(result: Run) -> RunResult:
    """A lab `Run` as JSON-safe lists, cut before the first step at which any value is not finite."""
    broken = divergence(result)
    kept = len(result.path) if broken is None else broken.step  # rows of path kept: x_0 .. x_{kept−1}
    steps = max(kept - 1, 0)
    hyperparameters = {name: list(value) if isinstance(value, tuple) else value
                       for name, value in result.hyperparameters.items()}
    return RunResult(name=result.optimizer, hyperparameters=hyperparameters,
                     path=result.path[:kept].tolist(), loss=result.loss[:kept].tolist(),
                     trace={name: values[:steps].tolist() for name, values in result.trace.items()},
                     steps=steps, diverged=broken is not None, message=None if broken is None else broken.message)


def _start(surface: Surface, start: list[float] | None) -> list[float]:
    try:
        return check_start(surface, start)
    except ValueError as error:
        raise _invalid(("body", "start"), str(error), start) from None


def _invalid(location: tuple[str | int, ...], message: str, given: Any) -> RequestValidationError:
    """A 422 answer in FastAPI's own format: `{"detail": [{"loc": [...], "msg": ..., ...}]}`."""
    return RequestValidationError([{"type": "value_error", "loc": location, "msg": message, "input": given}])
