"""The edge of stability (Cohen et al., ICLR 2021), on the lab's digits MLP with full-batch gradient descent.

On a quadratic, GD with step η diverges along any direction of curvature above 2/η (|1 − ηλ| > 1). A neural
network's curvature is not fixed: full-batch GD *sharpens* — the top Hessian eigenvalue, the sharpness
S(θ) = λ_max(∇²L(θ)), rises during training — until it reaches 2/η, and then it stops there and hovers while
the loss keeps falling, non-monotonically. Adam does the same with its preconditioned sharpness
λ_max(P⁻¹ ∇²L), P = diag(√v̂ + ε), against its own threshold (2 + 2β₁)/((1 − β₁) η) (Cohen et al. 2022),
the heavy-ball boundary of `lab.quadratic` with the EMA's momentum β₁.

The network is `lab.train`'s 64 → `hidden` → 10 ReLU MLP from `train.initial_parameters` (He init), trained on
the squared error ½ ‖f(x) − onehot(y)‖² (Cohen et al.'s MSE setting) with its output layer scaled by
`output_scale` at initialization; with cross-entropy on these easy digits the loss falls so fast that the
sharpness turns down before it can reach 2/η. The updates are the rules themselves (`lab.sweep.descend`);
the sharpness is power iteration on exact Hessian-vector products, the hand-written backpropagation
differentiated once more (Pearlmutter's R-operator: NumPy, like the rest of the lab; the tests check it
against `torch.func`).

    >>> from optimlab.lab.eos import edge_of_stability
    >>> (run,) = edge_of_stability(lrs=(0.4,), adam_lrs=(), steps=60, every=20, samples=300)
    >>> run.threshold, bool(run.sharpness[0] < 4 < run.sharpness.max())    # 2/η; sharpened up to it
    (5.0, True)
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .report import Section, figure, link, table
from .style import color, format_lr, new_figure
from .sweep import descend
from .train import initial_parameters, load_digits_split

#: The step sizes: GD's 2/η = 10 and 5, Adam's thresholds 3,800 and 1,267, all reached within the default run.
LRS = (0.2, 0.4)
ADAM_LRS = (0.01, 0.03)
ADAM_BETAS = (0.9, 0.999)
#: Parameter blocks of the MLP, in the order they are laid out in one flat vector.
_NAMES = ("W1", "b1", "W2", "b2")


@dataclass(frozen=True)
class Problem:
    """The full batch (inputs, one-hot targets) and the flat initial parameters of the MLP."""

    inputs: np.ndarray
    targets: np.ndarray
    start: np.ndarray
    hidden: int

    def unflatten(self, flat: Any) -> dict[str, Any]:
        """The parameter blocks (views) of a flat vector."""
        shapes = {"W1": (64, self.hidden), "b1": (self.hidden,), "W2": (self.hidden, 10), "b2": (10,)}
        blocks, offset = {}, 0
        for name in _NAMES:
            size = int(np.prod(shapes[name]))
            blocks[name] = flat[offset:offset + size].reshape(shapes[name])
            offset += size
        return blocks

    def loss(self, flat: np.ndarray) -> float:
        """L(θ) = mean over samples of ½ ‖f(x) − onehot(y)‖²."""
        params = self.unflatten(flat)
        hidden = np.maximum(self.inputs @ params["W1"] + params["b1"], 0.0)
        residual = hidden @ params["W2"] + params["b2"] - self.targets
        return float(0.5 * np.mean(np.sum(residual * residual, axis=1)))

    def gradient(self, flat: np.ndarray) -> np.ndarray:
        """∇L(θ) by backpropagation (as `train.loss_and_gradients`, for the squared error)."""
        params = self.unflatten(flat)
        pre_activation = self.inputs @ params["W1"] + params["b1"]
        hidden = np.maximum(pre_activation, 0.0)
        d_logits = (hidden @ params["W2"] + params["b2"] - self.targets) / len(self.targets)
        d_hidden = (d_logits @ params["W2"].T) * (pre_activation > 0)
        return np.concatenate([(self.inputs.T @ d_hidden).ravel(), d_hidden.sum(axis=0),
                               (hidden.T @ d_logits).ravel(), d_logits.sum(axis=0)])


    def hessian_vector_product(self, flat: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """∇²L(θ) u, exactly, by Pearlmutter's R-operator: `gradient`'s backpropagation differentiated along u.

        With z = XW₁ + b₁, h = relu(z), r = hW₂ + b₂ − Y and u = (V₁, c₁, V₂, c₂): Rz = XV₁ + c₁,
        Rh = Rz ⊙ [z > 0], Rr = RhW₂ + hV₂ + c₂; then the backward pass once more, with every product
        differentiated (ReLU's second derivative is 0 wherever it exists).
        """
        params, direction = self.unflatten(flat), self.unflatten(vector)
        pre_activation = self.inputs @ params["W1"] + params["b1"]
        active = pre_activation > 0
        hidden = np.maximum(pre_activation, 0.0)
        d_logits = (hidden @ params["W2"] + params["b2"] - self.targets) / len(self.targets)
        r_hidden = (self.inputs @ direction["W1"] + direction["b1"]) * active
        r_d_logits = (r_hidden @ params["W2"] + hidden @ direction["W2"] + direction["b2"]) / len(self.targets)
        r_d_hidden = (r_d_logits @ params["W2"].T + d_logits @ direction["W2"].T) * active
        return np.concatenate([(self.inputs.T @ r_d_hidden).ravel(), r_d_hidden.sum(axis=0),
                               (r_hidden.T @ d_logits + hidden.T @ r_d_logits).ravel(), r_d_logits.sum(axis=0)])


def make_problem(hidden: int = 32, samples: int | None = None, output_scale: float = 0.1, seed: int = 0) -> Problem:
    """The digits training split (its first `samples` images, default all 1,437), the MLP's seeded init."""
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"Invalid hidden: {hidden!r} (must be a whole number >= 1)")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 10):
        raise ValueError(f"Invalid samples: {samples!r} (must be a whole number >= 10)")
    if not output_scale > 0:
        raise ValueError(f"Invalid output_scale: {output_scale!r} (must be > 0)")
    data = load_digits_split(seed)
    count = len(data.train_y) if samples is None else min(samples, len(data.train_y))
    params = initial_parameters(seed, hidden)
    params["W2"] = params["W2"] * output_scale
    return Problem(data.train_x[:count], np.eye(10)[data.train_y[:count]],
                   np.concatenate([params[name].ravel() for name in _NAMES]), hidden)


def top_eigenvalue(problem: Problem, point: np.ndarray, vector: np.ndarray, iterations: int,
                   preconditioner: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """λ_max(∇²L(θ)) by `iterations` of power iteration from `vector`; returns it and the last iterate.

    With a diagonal `preconditioner` P it is λ_max(P⁻¹∇²L), iterated as the symmetric P^(−½) ∇²L P^(−½),
    which has the same eigenvalues. Along a trajectory, start from the previous point's eigenvector.
    """
    scale = None if preconditioner is None else 1.0 / np.sqrt(preconditioner)
    eigenvalue = 0.0
    for _ in range(iterations):
        image = problem.hessian_vector_product(point, vector if scale is None else scale * vector)
        if scale is not None:
            image = scale * image
        eigenvalue = float(image @ vector)
        vector = image / np.linalg.norm(image)
    return eigenvalue, vector


@dataclass(frozen=True)
class EdgeRun:
    """One full-batch run: loss every step, (preconditioned) sharpness at `measured` steps, its threshold."""

    optimizer: str
    lr: float
    loss: np.ndarray
    measured: np.ndarray
    sharpness: np.ndarray
    threshold: float

    def late_sharpness(self, fraction: float = 1 / 3) -> float:
        """Mean sharpness over the last `fraction` of the measurements."""
        count = max(1, int(round(len(self.sharpness) * fraction)))
        return float(np.mean(self.sharpness[-count:]))


def edge_of_stability(lrs: Sequence[float] = LRS, adam_lrs: Sequence[float] = ADAM_LRS, steps: int = 300,
                      every: int = 10, hidden: int = 32, samples: int | None = None, output_scale: float = 0.1,
                      iterations: int = 10, seed: int = 0) -> list[EdgeRun]:
    """GD at each of `lrs` and Adam (β = `ADAM_BETAS`) at each of `adam_lrs`, full batch, for `steps` steps.

    Each optimizer's lrs run as one batch of `descend`; the sharpness is measured every `every` steps
    (`iterations` of power iteration, warm-started; the first measurement gets three times as many).
    """
    for name, value in (("steps", steps), ("every", every), ("iterations", iterations)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Invalid {name}: {value!r} (must be a whole number >= 1)")
    for name, values in (("lrs", lrs), ("adam_lrs", adam_lrs)):
        if not all(np.isfinite(value) and value > 0 for value in values):
            raise ValueError(f"Invalid {name}: {list(values)} (each must be a finite number > 0)")
    if not lrs and not adam_lrs:
        raise ValueError("Invalid lrs: none given for GD or Adam")
    # The matrices are small: BLAS threads would only spin against each other (6× slower on 2 busy cores).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _edge_of_stability(lrs, adam_lrs, steps, every, hidden, samples, output_scale, iterations, seed)


def _edge_of_stability(lrs: Sequence[float], adam_lrs: Sequence[float], steps: int, every: int, hidden: int,
                       samples: int | None, output_scale: float, iterations: int, seed: int) -> list[EdgeRun]:
    problem = make_problem(hidden, samples, output_scale, seed)
    measured = np.arange(0, steps + 1, every)
    first_vector = np.random.default_rng(seed).normal(size=problem.start.size)
    runs = []
    for optimizer, values in (("sgd", lrs), ("adam", adam_lrs)):
        if not values:
            continue
        settings: dict[str, Any] = {"lr": [float(value) for value in values]}
        if optimizer == "adam":
            settings["betas"] = ADAM_BETAS
        batch = descend(optimizer, settings, problem.start,
                        lambda t, points: np.stack([problem.gradient(point) for point in points]), steps,
                        record_trace=optimizer == "adam")
        for index, lr in enumerate(settings["lr"]):
            path = batch.path[:, index]
            with np.errstate(all="ignore"):
                loss = np.array([problem.loss(point) for point in path])
            sharpness, vector = [], first_vector / np.linalg.norm(first_vector)
            for count, step in enumerate(measured):
                # P_t = diag(√v̂_t + ε) of the step that produced θ_t (at θ_0, the first step's)
                preconditioner = (None if optimizer == "sgd"
                                  else np.sqrt(batch.trace["v_hat"][max(step - 1, 0), index])
                                  + batch.hyperparameters["eps"])
                eigenvalue, vector = top_eigenvalue(problem, path[step], vector,
                                                    iterations * (3 if count == 0 else 1), preconditioner)
                sharpness.append(eigenvalue)
            beta1 = ADAM_BETAS[0]
            threshold = 2.0 / lr if optimizer == "sgd" else (2 + 2 * beta1) / ((1 - beta1) * lr)
            runs.append(EdgeRun(optimizer, lr, loss, measured, np.array(sharpness), threshold))
    return runs


def write_eos_csv(runs: Sequence[EdgeRun], path: Path | str) -> Path:
    """eos.csv: lr,step,loss,sharpness for the GD runs (`lr` the step size; sharpness at the measured steps)."""
    return _write(runs, path, "sgd", ["lr", "step", "loss", "sharpness"])


def write_adam_csv(runs: Sequence[EdgeRun], path: Path | str) -> Path:
    """eos-adam.csv: lr,step,loss,preconditioned_sharpness,threshold for the Adam runs."""
    return _write(runs, path, "adam", ["lr", "step", "loss", "preconditioned_sharpness", "threshold"])


def _write(runs: Sequence[EdgeRun], path: Path | str, optimizer: str, header: list[str]) -> Path:
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for run in runs:
            if run.optimizer != optimizer:
                continue
            for step, sharpness in zip(run.measured, run.sharpness, strict=True):
                row = [repr(run.lr), int(step), repr(float(run.loss[step])), repr(float(sharpness))]
                writer.writerow(row + ([repr(run.threshold)] if optimizer == "adam" else []))
    return path


def plot_eos(runs: Sequence[EdgeRun], path: Path | str) -> Path:
    """GD's sharpness with its 2/η lines and loss (left, middle); Adam's preconditioned sharpness (right)."""
    path = Path(path)
    gd = [run for run in runs if run.optimizer == "sgd"]
    adam = [run for run in runs if run.optimizer == "adam"]
    figure_ = new_figure(15 if adam else 10.5, 4.8)
    panels = figure_.subplots(1, 3 if adam else 2)
    sharpness_axes, loss_axes = panels[0], panels[1]
    tints = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    for index, run in enumerate(gd):
        tint = tints[index % len(tints)]
        sharpness_axes.plot(run.measured, run.sharpness, "o-", color=tint, markersize=3, linewidth=1.3,
                            label=f"η = {format_lr(run.lr)}")
        sharpness_axes.axhline(run.threshold, color=tint, linestyle="--", linewidth=1,
                               label=f"2/η = {run.threshold:.3g}")
        loss_axes.plot(np.arange(len(run.loss)), run.loss, color=tint, linewidth=1.3, label=f"η = {format_lr(run.lr)}")
    sharpness_axes.set(xlabel="step", ylabel="sharpness λ_max(∇²L)",
                       title="Full-batch GD: sharpness rises to 2/η and hovers")
    loss_axes.set(yscale="log", xlabel="step", ylabel="training loss (squared error, log)",
                  title="…while the loss keeps falling, not monotonically")
    for index, run in enumerate(adam):
        axes = panels[2]
        tint = color("adam") if index == 0 else tints[(index + 2) % len(tints)]
        axes.plot(run.measured, run.sharpness, "o-", color=tint, markersize=3, linewidth=1.3,
                  label=f"Adam, η = {format_lr(run.lr)}")
        axes.axhline(run.threshold, color=tint, linestyle="--", linewidth=1,
                     label=f"(2 + 2β₁)/((1 − β₁)η) = {run.threshold:,.0f}")
    if adam:
        panels[2].set(xlabel="step", ylabel="preconditioned sharpness λ_max(P⁻¹∇²L)",
                      title=f"Adam (β₁ = {ADAM_BETAS[0]}): P = diag(√v̂ + ε)")
    # where the curves are not: between the two edges, above the falling losses, under Adam's edge
    for axes, place in zip(panels, ("center right", "upper right", "lower right"), strict=False):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8, loc=place)
    figure_.suptitle("The edge of stability on the digits MLP (full batch): sharpness measured by power iteration "
                     "on Hessian-vector products", fontsize=11)
    figure_.savefig(path)
    return path


def eos_experiment(out: Path | str, lrs: Sequence[float] = LRS, adam_lrs: Sequence[float] = ADAM_LRS,
                   steps: int = 300, every: int = 10, hidden: int = 32, samples: int | None = None,
                   seed: int = 0) -> Section:
    """`edge_of_stability` into `out`: eos.png, eos.csv (GD) and eos-adam.csv."""
    runs = edge_of_stability(lrs, adam_lrs, steps, every, hidden, samples, seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused or failed computation leaves no folder
    files = [plot_eos(runs, out / "eos.png").name, write_eos_csv(runs, out / "eos.csv").name]
    if adam_lrs:
        files.append(write_adam_csv(runs, out / "eos-adam.csv").name)
    rows = [["GD" if run.optimizer == "sgd" else "Adam", format_lr(run.lr),
             "2/η" if run.optimizer == "sgd" else "(2 + 2β₁)/((1 − β₁)η)", f"{run.threshold:.4g}",
             f"{run.late_sharpness():.4g}", f"{run.late_sharpness() / run.threshold:.1%}"] for run in runs]
    count = len(make_problem(hidden, samples, seed=seed).targets)
    body = (f"<p>Full-batch GD on the digits MLP (64–{hidden}–10, squared error, {count} images): the sharpness "
            "(top Hessian eigenvalue) rises until it reaches 2/η, the largest curvature GD can follow at step η, "
            "and stays there while the loss keeps falling (Cohen et al., ICLR 2021). Adam's preconditioned "
            "sharpness meets its own threshold (Cohen et al. 2022).</p>")
    body += (figure(files[0], f"Sharpness every {every} steps with each run's threshold (dashed).")
             + table(["optimizer", "lr", "threshold", "value", "late sharpness (last third)", "of threshold"], rows)
             + "<p>Data: " + ", ".join(link(name) for name in files[1:]) + ".</p>")
    return Section("eos", "The edge of stability", body, tuple(files))


__all__ = ["ADAM_BETAS", "ADAM_LRS", "LRS", "EdgeRun", "Problem", "edge_of_stability",
           "eos_experiment", "make_problem", "plot_eos", "top_eigenvalue", "write_adam_csv", "write_eos_csv"]
