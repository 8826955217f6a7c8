"""Every registered optimizer is reachable from every surface: NumPy, PyTorch, `optimlab trace`, the lab, the API."""

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import optimlab.numpy
import optimlab.torch
from optimlab.cli import app as cli
from optimlab.lab import run
from optimlab.lab.style import color, label
from optimlab.rules import OPTIMIZERS, REGISTRY
from optimlab.serve import create_app

client = TestClient(create_app(), base_url="http://127.0.0.1")
NAMES = list(REGISTRY)


def test_the_registry_is_the_list_every_table_is_read_from():
    assert list(OPTIMIZERS) == NAMES
    assert len({entry.color for entry in REGISTRY.values()}) == len(NAMES)  # each keeps its own colour


@pytest.mark.parametrize("name", NAMES)
def test_numpy(name):
    entry = REGISTRY[name]
    optimizer = getattr(optimlab.numpy, entry.numpy_class)()
    assert optimizer.rule is entry.rule and entry.numpy_class in optimlab.numpy.__all__
    params = {"W": np.ones(3)}
    optimlab.numpy.create(name).update(params, {"W": np.array([1.0, -2.0, 0.5])})
    assert not np.array_equal(params["W"], np.ones(3))


@pytest.mark.parametrize("name", NAMES)
def test_torch(name):
    entry = REGISTRY[name]
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = optimlab.torch.create(name, [param], lr=0.1)
    assert type(optimizer) is getattr(optimlab.torch, entry.torch_class)
    assert entry.torch_class in optimlab.torch.__all__
    rule, _ = optimizer.rule_for(optimizer.param_groups[0])
    assert rule is entry.rule or name == "sgd"  # SGD runs the momentum rule only with momentum
    if hasattr(optimizer, "train"):  # a train mode to step in (Schedule-Free)
        optimizer.train()
    param.grad = torch.tensor([1.0, -2.0, 0.5])
    optimizer.step()
    assert not torch.equal(param.detach(), torch.ones(3))


@pytest.mark.parametrize("name", NAMES)
def test_trace_cli(name):
    result = CliRunner().invoke(cli, ["trace", name, "--steps", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["steps"]
    assert set(REGISTRY[name].trace_labels) <= set(rows[0]) | {"g_avg"}  # ḡ only when centered
    assert name in CliRunner().invoke(cli, ["trace", "--help"], env={"COLUMNS": "200"}).stdout


@pytest.mark.parametrize("name", NAMES)
def test_lab(name):
    result = run("ellipse", name, {"lr": 0.1}, steps=3)
    assert result.path.shape == (4, 2) and label(name) == REGISTRY[name].label
    assert color(name) == REGISTRY[name].color


@pytest.mark.parametrize("name", NAMES)
def test_playground_api(name):
    entry = REGISTRY[name]
    (info,) = [info for info in client.get("/api/optimizers").json() if info["name"] == name]
    assert (info["title"], info["color"]) == (entry.label, entry.color)
    assert info["trace_labels"] == entry.all_trace_labels()
    assert info["trace_scalars"] == list(entry.trace_scalars)
    response = client.post("/api/run", json={"surface": "ellipse", "steps": 3, "optimizers": [{"name": name}]})
    assert response.status_code == 200, response.text
    assert set(response.json()["runs"][0]["trace"]) <= set(info["trace_labels"])
