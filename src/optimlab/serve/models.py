"""The playground's JSON API, as pydantic models: what `/api/*` accepts and returns, documented in OpenAPI.

Each optimizer's settings model is generated from its rule (`optimlab.rules.OPTIMIZERS`): one field per
hyperparameter, typed by its default (a switch, a real number or a pair of them) and defaulting to PyTorch's
value. The models check only types and finiteness; the ranges (lr ≥ 0, β in [0, 1), ...) are checked by the
rule's own `validate`, so that the API, the optimizers and `optimlab trace` refuse exactly the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, create_model

from ..lab.style import label
from ..lab.surfaces import SURFACES
from ..rules import OPTIMIZERS

#: Bounds on one request, so that no input makes the server work for long (each step of one optimizer
#: costs ~50 µs; the largest request runs in about a second and answers a few MB of JSON).
MAX_STEPS = 10_000
MAX_OPTIMIZERS = 16
MAX_TOTAL_STEPS = 20_000
MAX_BODY_BYTES = 1 << 20
#: Seconds for a request body to arrive in full (a valid one is a few kB: it takes milliseconds).
BODY_TIMEOUT = 10.0
#: Runs (and grids) computed at once; more get 503 with Retry-After. They share one interpreter lock, so more
#: at once would not finish sooner, only hold more memory and slow every other request.
MAX_RUNS_IN_FLIGHT = 4

FiniteFloat = Annotated[StrictFloat, Field(allow_inf_nan=False)]
SurfaceName = Literal[tuple(SURFACES)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class Control:
    """How the page shows one hyperparameter: what it means, and its slider's range and scale."""

    description: str
    low: float = 0.0
    high: float = 1.0
    scale: Literal["linear", "log"] = "linear"


#: The page's controls, by rule hyperparameter name. A hyperparameter missing here still works
#: (`control_for` gives it a plain slider); this table only adds meaning and sensible ranges.
CONTROLS: dict[str, Control] = {
    "lr": Control("learning rate η", 1e-4, 10.0, "log"),
    "momentum": Control("momentum γ: how much of the previous step's buffer is kept", 0.0, 0.999),
    "dampening": Control("dampening: the buffer adds (1 − dampening) g", 0.0, 1.0),
    "betas": Control("(β1, β2): decay rates of the EMAs m of g and v of g²", 0.0, 0.9999),
    "alpha": Control("ρ: decay of RMSProp's average of g² (PyTorch calls it alpha)", 0.0, 0.9999),
    "eps": Control("ε outside the root: denominator √(x + eps_root) + eps", 1e-12, 1.0, "log"),
    "eps_root": Control("ε inside the root (the notes' placement): √(x + eps_root) + eps", 1e-12, 1.0, "log"),
    "weight_decay": Control("weight decay λ (L2; decoupled θ ← θ(1 − ηλ) for AdamW)", 1e-5, 1.0, "log"),
    "lr_decay": Control("AdaGrad's learning-rate decay: η / (1 + (t − 1) lr_decay)", 1e-5, 1.0, "log"),
    "initial_accumulator_value": Control("AdaGrad's starting h", 0.0, 10.0),
    "nesterov": Control("Nesterov momentum: step along g + γ b"),
    "amsgrad": Control("AMSGrad: divide by the running maximum of v"),
    "centered": Control("centered RMSProp: divide by an estimate of the variance s − ḡ²"),
    "maximize": Control("climb instead of descend"),
    "decoupled_weight_decay": Control("decay θ directly (AdamW) instead of adding λθ to g"),
}

def control_for(name: str, default: Any) -> Control:
    """The page's control for hyperparameter `name` (a plain 0..max(1, 2·default) slider if unlisted)."""
    if name in CONTROLS:
        return CONTROLS[name]
    high = max(1.0, 2 * max(default)) if isinstance(default, tuple) else max(1.0, 2 * float(default))
    return Control(name.replace("_", " "), 0.0, high)


def _annotation(default: Any) -> Any:
    if isinstance(default, bool):
        return StrictBool
    if isinstance(default, tuple):
        return tuple[(FiniteFloat,) * len(default)]  # type: ignore[misc]
    return FiniteFloat


def _settings_model(optimizer: str) -> type[BaseModel]:
    rule, overrides = OPTIMIZERS[optimizer]
    defaults = {**rule.hyperparameters, **overrides}
    fields: dict[str, Any] = {
        name: (_annotation(default), Field(default, description=control_for(name, default).description))
        for name, default in defaults.items()
    }
    title = label(optimizer)
    return create_model(
        f"{title}Hyperparameters",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"{title}'s hyperparameters ({rule.name} rule), PyTorch's names and defaults. "
                f"Ranges are checked by the rule: a value it refuses gets HTTP 422 naming the field.",
        **fields,
    )


def _optimizer_model(optimizer: str) -> type[BaseModel]:
    settings = _settings_model(optimizer)
    title = label(optimizer)
    return create_model(
        f"{title}Settings",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"One {title} run: its name and the hyperparameters that differ from the defaults.",
        name=(Literal[optimizer], Field(description="the optimizer")),
        hyperparameters=(settings, Field(default_factory=settings, description="omitted ones take defaults")),
    )


OPTIMIZER_MODELS: dict[str, type[BaseModel]] = {name: _optimizer_model(name) for name in OPTIMIZERS}
OptimizerSettings = Annotated[Union[tuple(OPTIMIZER_MODELS.values())],  # noqa: UP007 (a runtime tuple)
                              Field(discriminator="name")]


class RunRequest(BaseModel):
    """Run some optimizers on one surface from one start point."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "surface": "ellipse", "start": [-7.0, 2.0], "steps": 30,
        "optimizers": [{"name": "sgd", "hyperparameters": {"lr": 0.95}},
                       {"name": "adam", "hyperparameters": {"lr": 0.3, "betas": [0.9, 0.999]}}],
    }]})

    surface: SurfaceName = Field(description="a surface from GET /api/surfaces", examples=["ellipse"])
    start: Annotated[list[FiniteFloat], Field(min_length=1, max_length=2)] | None = Field(
        None, description="start point, one coordinate per variable, inside the surface's bounds; "
                          "omitted: the surface's default start", examples=[[-7.0, 2.0]])
    steps: StrictInt = Field(30, ge=1, le=MAX_STEPS, description="number of steps of each optimizer")
    optimizers: list[OptimizerSettings] = Field(
        min_length=1, max_length=MAX_OPTIMIZERS,
        description=f"the optimizers to run (at most {MAX_OPTIMIZERS}; steps × optimizers at most "
                    f"{MAX_TOTAL_STEPS}); the same optimizer may appear with different settings")



class RunResult(BaseModel):
    """One optimizer's trajectory, the loss along it and every per-step quantity `optimlab trace` shows.

    Rows are cut before the first step at which anything became non-finite (divergence): then `diverged`
    is true and `message` says where and what; every number in the answer is finite.
    """

    name: str = Field(description="the optimizer", examples=["adam"])
    hyperparameters: dict[str, bool | float | list[float]] = Field(
        description="every hyperparameter the run used, defaults filled in", examples=[{"lr": 0.3}])
    path: list[list[float]] = Field(description="x_0 (the start), x_1, …: one point per row")
    loss: list[float] = Field(description="f(x_t) for each row of path")
    trace: dict[str, list[list[float]]] = Field(
        description="per-step quantities, row t − 1 for step t: g (the gradient at x_{t−1}), the rule's own "
                    "(Adam: m, v, m_hat, v_hat, alpha_t; Momentum: b, V; AdaGrad: h, rate; RMSProp: s, g_avg) "
                    "and update = x_t − x_{t−1}")
    steps: int = Field(description="steps completed (rows of path − 1)")
    diverged: bool = Field(description="whether the run was cut because a value became non-finite")
    message: str | None = Field(None, description="where and how it diverged, if it did")


class RunResponse(BaseModel):
    """The runs of a `RunRequest`, in the order asked."""

    surface: str
    start: list[float] = Field(description="the start point used")
    runs: list[RunResult]


class BadRequest(BaseModel):
    """A body that cannot be read at all: not text (e.g. invalid UTF-8), or too large."""

    detail: str = Field(examples=["There was an error parsing the body"])


class Busy(BaseModel):
    """Too many runs in flight (`MAX_RUNS_IN_FLIGHT`): retry after the seconds in the Retry-After header."""

    detail: str = Field(examples=["busy: 4 runs in flight; retry in a second"])


class SurfaceInfo(BaseModel):
    """A test surface: its formula, default start, the box the page shows (and starts must lie in), minimum."""

    name: str = Field(examples=["ellipse"])
    title: str
    formula: str
    description: str
    dim: int = Field(description="number of variables: 1 (x) or 2 (x, y)")
    start: list[float] = Field(description="default start point")
    bounds: list[tuple[float, float]] = Field(description="(low, high) per variable")
    minimum: list[float] | None = Field(description="the global minimizer; null where unbounded below")
    steps: int = Field(description="the steps the defaults were chosen for, and the page's steps on it")
    defaults: dict[str, dict[str, bool | float | list[float]]] = Field(
        description="optimizer name -> its hyperparameters on this surface: PyTorch's defaults, with the lr its "
                    "lab sweep scores best over `steps` steps from `start` (optimlab.lab.defaults), to three "
                    "significant digits",
        examples=[{"sgd": {"lr": 0.78, "weight_decay": 0.0, "maximize": False}}])


class SurfaceGrid(BaseModel):
    """f sampled on a regular grid over the surface's bounds, for a contour plot (2-D) or a curve (1-D)."""

    name: str
    x: list[float]
    y: list[float] | None = Field(description="null for 1-D surfaces")
    z: list[list[float]] | list[float] = Field(description="f[y][x] for 2-D surfaces, f[x] for 1-D ones")


class HyperparameterInfo(BaseModel):
    """One hyperparameter as the page shows it."""

    name: str = Field(examples=["lr"])
    kind: Literal["switch", "real", "pair"]
    default: bool | float | list[float] = Field(description="PyTorch's default (with the optimizer's overrides)")
    description: str
    low: float = Field(description="slider minimum (the number box accepts anything the rule does)")
    high: float = Field(description="slider maximum")
    scale: Literal["linear", "log"]


class OptimizerInfo(BaseModel):
    """An optimizer the API runs, with its hyperparameters."""

    name: str = Field(examples=["adam"])
    title: str = Field(examples=["Adam"])
    color: str = Field(description="its colour in the lab's figures", examples=["#d62728"])
    rule: str = Field(description="the rule it evaluates (Nesterov is the momentum rule, AdamW Adam's)")
    hyperparameters: list[HyperparameterInfo]
    trace_labels: dict[str, str] = Field(description="the header of each trace quantity, as `optimlab trace`",
                                         examples=[{"g": "g_t", "m": "m_t", "update": "Δx"}])
    trace_scalars: list[str] = Field(description="trace quantities that are one per-step scalar (shown once)",
                                     examples=[["alpha_t"]])
