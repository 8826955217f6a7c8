"""What bfloat16 optimizer state costs in accuracy: the lab's digits MLP trained with fp32 and bf16 Adam state.

    .venv/bin/python benchmarks/bf16_state.py            # prints a Markdown table (README, "Performance")

The lab's split (`optimlab.lab.train.load_digits_split`: 1,437 train / 360 test 8×8 digits) and network shape
(64 → 128 → 10, ReLU), as a float32 torch model; every run starts from the same init and sees the same
minibatches. Contenders: `torch.optim.Adam` (fused), optimlab's Adam on the numba backend with float32 state,
and the same with `state_dtype=torch.bfloat16`. Several seeds, because one seed's difference is noise.
"""

from __future__ import annotations

import statistics

import torch

import optimlab.torch as optimlab_torch
from optimlab.lab.train import load_digits_split

EPOCHS, BATCH, LR, HIDDEN, SEEDS = 30, 32, 1e-3, 128, (0, 1, 2, 3, 4)


def train(make_optimizer, seed: int, data) -> tuple[float, float, float]:
    """(final train loss, test loss, test accuracy) after `EPOCHS` epochs."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10))
    optimizer = make_optimizer(model.parameters())
    train_x, train_y = torch.tensor(data.train_x, dtype=torch.float32), torch.tensor(data.train_y)
    test_x, test_y = torch.tensor(data.test_x, dtype=torch.float32), torch.tensor(data.test_y)
    order = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(train_x), generator=order).split(BATCH):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        train_loss = torch.nn.functional.cross_entropy(model(train_x), train_y).item()
        logits = model(test_x)
        test_loss = torch.nn.functional.cross_entropy(logits, test_y).item()
        accuracy = (logits.argmax(1) == test_y).float().mean().item()
    return train_loss, test_loss, accuracy


def main() -> None:
    data = load_digits_split(seed=0)
    contenders = {
        "torch.optim.Adam (fused), fp32 state": lambda params: torch.optim.Adam(params, lr=LR, fused=True),
        "optimlab Adam (numba), fp32 state": lambda params: optimlab_torch.Adam(params, lr=LR, backend="numba"),
        "optimlab Adam (numba), bf16 state": lambda params: optimlab_torch.Adam(
            params, lr=LR, backend="numba", state_dtype=torch.bfloat16),
    }
    print(f"Digits MLP 64→{HIDDEN}→10, Adam lr={LR}, {EPOCHS} epochs, batch {BATCH}, seeds {list(SEEDS)} "
          "(mean ± sd over seeds)\n")
    print("| optimizer state | final train loss | test loss | test accuracy |\n|---|---|---|---|")
    for name, make in contenders.items():
        runs = [train(make, seed, data) for seed in SEEDS]
        cells = []
        for index, digits in ((0, 4), (1, 4), (2, 4)):
            values = [run[index] for run in runs]
            cells.append(f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}")
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
