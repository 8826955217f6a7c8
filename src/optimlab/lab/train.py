"""A small MLP on scikit-learn's bundled digits, trained by every optimizer from the same seed and init.

    >>> from optimlab.lab.train import train_all
    >>> results = train_all(["sgd", "adam"], epochs=2, seed=0)
    >>> bool(results["adam"].test_accuracy[-1] > 0.8)
    True

The network is 64 → `hidden` → 10 (ReLU, softmax cross-entropy), written in NumPy; the updates are
`optimlab.numpy` optimizers, i.e. the rules themselves. Every optimizer sees the same initial weights and the
same minibatch order, so the curves differ only by the update rule. Everything is float64 and seeded:
the same seed gives the same numbers.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._extras import requires_extra
from ..ema import ema, span_to_alpha
from ..numpy import create
from .style import color, format_lr, label, new_figure

#: Each optimizer's best lr from {0.001, 0.003, ..., 0.3} by test loss after 10 epochs, seed 0 (a demo, not a
#: benchmark: picked on the held-out split). Momentum's η multiplies b ≈ g / (1 − γ), hence its smaller lr.
DEFAULT_LRS: dict[str, float] = {"sgd": 0.3, "momentum": 0.1, "nesterov": 0.1, "adagrad": 0.1,
                                 "rmsprop": 0.01, "adam": 0.01, "adamw": 0.01}


@dataclass(frozen=True)
class Digits:
    """The digits split: 8×8 images scaled to [0, 1] as rows of 64, labels 0..9."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_digits_split(seed: int = 0, test_fraction: float = 0.2) -> Digits:
    """scikit-learn's bundled digits (1,797 images, no download), split by a seeded, stratified shuffle."""
    with requires_extra("the lab's digits data"):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

    data = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(data.data / 16.0, data.target, test_size=test_fraction,
                                                        random_state=seed, stratify=data.target)
    return Digits(train_x, train_y, test_x, test_y)


def initial_parameters(seed: int, hidden: int, inputs: int = 64, classes: int = 10) -> dict[str, np.ndarray]:
    """He-initialized weights and zero biases from `seed`: the one starting point every optimizer shares."""
    rng = np.random.default_rng(seed)
    return {"W1": rng.normal(0.0, np.sqrt(2.0 / inputs), (inputs, hidden)), "b1": np.zeros(hidden),
            "W2": rng.normal(0.0, np.sqrt(2.0 / hidden), (hidden, classes)), "b2": np.zeros(classes)}


def loss_and_gradients(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                       ) -> tuple[float, float, dict[str, np.ndarray]]:
    """Mean cross-entropy, accuracy and the gradients of the loss for one batch (backpropagation by hand)."""
    pre_activation = x @ params["W1"] + params["b1"]
    hidden = np.maximum(pre_activation, 0.0)
    logits = hidden @ params["W2"] + params["b2"]
    logits = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = float(-np.mean(np.log(probabilities[rows, y] + 1e-300)))
    accuracy = float(np.mean(probabilities.argmax(axis=1) == y))
    d_logits = probabilities
    d_logits[rows, y] -= 1.0
    d_logits /= len(y)
    d_hidden = (d_logits @ params["W2"].T) * (pre_activation > 0)
    gradients = {"W1": x.T @ d_hidden, "b1": d_hidden.sum(axis=0), "W2": hidden.T @ d_logits,
                 "b2": d_logits.sum(axis=0)}
    return loss, accuracy, gradients


@dataclass(frozen=True)
class TrainingRun:
    """One optimizer's curves: per step the minibatch loss and accuracy, per epoch the test loss and accuracy."""

    optimizer: str
    lr: float
    batch_loss: np.ndarray
    batch_accuracy: np.ndarray
    test_loss: np.ndarray
    test_accuracy: np.ndarray

    @property
    def steps_per_epoch(self) -> int:
        return len(self.batch_loss) // len(self.test_loss)


def train(optimizer: str, data: Digits, lr: float | None = None, epochs: int = 10, batch_size: int = 32,
          hidden: int = 64, seed: int = 0, on_step: Callable[[], None] | None = None) -> TrainingRun:
    """Train the MLP with `optimizer` (default lr from `DEFAULT_LRS`); `on_step` is called after each step."""
    if epochs < 1 or batch_size < 1 or hidden < 1:
        raise ValueError(f"Invalid training size: epochs={epochs}, batch_size={batch_size}, hidden={hidden} "
                         "(each must be >= 1)")
    lr = DEFAULT_LRS.get(optimizer.lower(), 0.01) if lr is None else lr
    updater = create(optimizer, lr=lr)
    params = initial_parameters(seed, hidden)
    order_rng = np.random.default_rng(seed + 1)  # the same minibatch order for every optimizer
    batch_loss, batch_accuracy, test_loss, test_accuracy = [], [], [], []
    with np.errstate(all="ignore"):  # a diverging lr shows up as NaN in the curves
        for _ in range(epochs):
            order = order_rng.permutation(len(data.train_y))
            for first in range(0, len(order), batch_size):
                batch = order[first:first + batch_size]
                loss, accuracy, gradients = loss_and_gradients(params, data.train_x[batch], data.train_y[batch])
                updater.update(params, gradients)
                batch_loss.append(loss)
                batch_accuracy.append(accuracy)
                if on_step is not None:
                    on_step()
            loss, accuracy, _ = loss_and_gradients(params, data.test_x, data.test_y)
            test_loss.append(loss)
            test_accuracy.append(accuracy)
    return TrainingRun(optimizer.lower(), float(lr), np.array(batch_loss), np.array(batch_accuracy),
                       np.array(test_loss), np.array(test_accuracy))


def steps_per_epoch(data: Digits, batch_size: int) -> int:
    """Minibatches per epoch (the last one may be smaller)."""
    return -(-len(data.train_y) // batch_size)


def train_all(optimizers: Iterable[str], lrs: Mapping[str, float] | None = None, epochs: int = 10,
              batch_size: int = 32, hidden: int = 64, seed: int = 0,
              on_step: Callable[[str], None] | None = None) -> dict[str, TrainingRun]:
    """`train` for each optimizer on the same split, init and batch order; `on_step(name)` after each step."""
    data = load_digits_split(seed)
    lrs = lrs or {}
    return {name: train(name, data, lrs.get(name), epochs, batch_size, hidden, seed,
                        None if on_step is None else (lambda name=name: on_step(name)))
            for name in optimizers}


def smooth(values: np.ndarray, span: int) -> np.ndarray:
    """The notes' EMA with α = 2 / (span + 1), bias-corrected so the curve does not start at 0."""
    return ema(values, span_to_alpha(span), bias_correction=True)


def plot_training(runs: Mapping[str, TrainingRun], path: Path | str, span: int = 20) -> Path:
    """Loss and accuracy per step (raw, faint; EMA-smoothed with `span`, bold) and per epoch on the test set."""
    path = Path(path)
    figure = new_figure(12, 7.5)
    (loss_axes, accuracy_axes), (test_loss_axes, test_accuracy_axes) = figure.subplots(2, 2)
    for name, result in runs.items():
        steps = np.arange(1, len(result.batch_loss) + 1)
        tag = f"{label(name)} (lr {format_lr(result.lr)})"
        loss_axes.plot(steps, result.batch_loss, color=color(name), alpha=0.2, linewidth=0.6)
        loss_axes.plot(steps, smooth(result.batch_loss, span), color=color(name), linewidth=1.6, label=tag)
        accuracy_axes.plot(steps, result.batch_accuracy, color=color(name), alpha=0.15, linewidth=0.6)
        accuracy_axes.plot(steps, smooth(result.batch_accuracy, span), color=color(name), linewidth=1.6,
                           label=tag)
        epochs = np.arange(1, len(result.test_loss) + 1)
        test_loss_axes.plot(epochs, result.test_loss, "o-", color=color(name), markersize=3, label=tag)
        test_accuracy_axes.plot(epochs, result.test_accuracy, "o-", color=color(name), markersize=3, label=tag)
    alpha = span_to_alpha(span)
    loss_axes.set(yscale="log", xlabel="step", ylabel="cross-entropy (log scale)",
                  title=f"minibatch loss: raw (faint) and EMA, span {span} (α = 2/(N+1) = {alpha:.3g})")
    accuracy_axes.set(xlabel="step", ylabel="accuracy", title=f"minibatch accuracy: raw (faint) and EMA, span {span}")
    test_loss_axes.set(yscale="log", xlabel="epoch", ylabel="cross-entropy (log scale)", title="test loss")
    test_accuracy_axes.set(xlabel="epoch", ylabel="accuracy", title="test accuracy")
    for axes in (loss_axes, accuracy_axes, test_loss_axes, test_accuracy_axes):
        axes.grid(True, alpha=0.3)
    test_accuracy_axes.legend(fontsize=8, loc="lower right")
    figure.suptitle("An MLP on scikit-learn's digits: same seed, same init, same batches — only the rule differs",
                    fontsize=12)
    figure.savefig(path)
    return path


def write_training_csv(runs: Mapping[str, TrainingRun], path: Path | str, span: int = 20) -> Path:
    """One row per optimizer and step: epoch, minibatch loss/accuracy raw and EMA, test metrics at epoch ends."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["optimizer", "lr", "step", "epoch", "batch_loss", "batch_loss_ema", "batch_accuracy",
                         "batch_accuracy_ema", "test_loss", "test_accuracy"])
        for name, result in runs.items():
            per_epoch = result.steps_per_epoch
            loss_ema, accuracy_ema = smooth(result.batch_loss, span), smooth(result.batch_accuracy, span)
            for index in range(len(result.batch_loss)):
                epoch, position = divmod(index, per_epoch)
                at_end = position == per_epoch - 1
                writer.writerow([name, repr(result.lr), index + 1, epoch + 1, repr(float(result.batch_loss[index])),
                                 repr(float(loss_ema[index])), repr(float(result.batch_accuracy[index])),
                                 repr(float(accuracy_ema[index])),
                                 repr(float(result.test_loss[epoch])) if at_end else "",
                                 repr(float(result.test_accuracy[epoch])) if at_end else ""])
    return path


__all__ = ["DEFAULT_LRS", "Digits", "TrainingRun", "initial_parameters", "load_digits_split",
           "loss_and_gradients", "plot_training", "smooth", "steps_per_epoch", "train", "train_all",
           "write_training_csv"]
