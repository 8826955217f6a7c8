"""The playground's JSON API: the same numbers as `optimlab trace`, bounded inputs, 422s naming the field,
valid JSON even when a run diverges, and no server error for anything schemathesis generates."""

import asyncio
import json
import math
import re

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from optimlab.lab.defaults import steps_for, surface_defaults
from optimlab.lab.surfaces import SURFACES
from optimlab.rules import OPTIMIZERS
from optimlab.serve import create_app
from optimlab.serve.models import MAX_BODY_BYTES, MAX_OPTIMIZERS, MAX_STEPS, MAX_TOTAL_STEPS
from optimlab.tracing import notes_function, trace

app = create_app()
client = TestClient(app, base_url="http://127.0.0.1:8000")  # a loopback Host: the only ones answered


def _run(**body):
    return client.post("/api/run", json={"surface": "ellipse", "optimizers": [{"name": "adam"}], **body})


def _error(response):
    """The single validation error of a 422 answer: (location, message)."""
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    return tuple(errors[0]["loc"]), errors[0]["msg"]


def test_surfaces_are_the_labs():
    surfaces = {surface["name"]: surface for surface in client.get("/api/surfaces").json()}
    assert list(surfaces) == list(SURFACES)
    ellipse = surfaces["ellipse"]
    assert ellipse["start"] == [-7.0, 2.0] and ellipse["bounds"] == [[-10.0, 10.0], [-5.0, 5.0]]
    assert surfaces["saddle"]["minimum"] is None and surfaces["notes"]["dim"] == 1


def test_surfaces_carry_each_optimizers_defaults_on_them():
    """Every rule hyperparameter at PyTorch's default (with the optimizer's overrides), lr from the lab's sweep
    (rounded: the page shows it in a small box; the next test runs the rounded values)."""
    for surface in client.get("/api/surfaces").json():
        assert surface["steps"] == steps_for(surface["name"])
        assert list(surface["defaults"]) == list(OPTIMIZERS)
        for optimizer, hyperparameters in surface["defaults"].items():
            rule, overrides = OPTIMIZERS[optimizer]
            best = surface_defaults(surface["name"])[optimizer]["lr"]  # shown to three significant digits
            expected = {**rule.hyperparameters, **overrides, "lr": float(f"{best:.3g}")}
            assert hyperparameters == {name: list(value) if isinstance(value, tuple) else value
                                       for name, value in expected.items()}


@pytest.mark.parametrize("name", list(SURFACES))
def test_the_defaults_run_without_diverging_and_descend_on_every_surface(name):
    """The ellipse's learning rates kept on Rosenbrock, Beale and the notes' parabola made SGD and Momentum
    diverge within 5 steps; each surface's own defaults, for its steps, never do."""
    surface = {surface["name"]: surface for surface in client.get("/api/surfaces").json()}[name]
    response = client.post("/api/run", json={
        "surface": name, "steps": surface["steps"],
        "optimizers": [{"name": optimizer, "hyperparameters": hyperparameters}
                       for optimizer, hyperparameters in surface["defaults"].items()]})
    assert response.status_code == 200, response.text
    for result in response.json()["runs"]:
        assert not result["diverged"], (result["name"], result["message"])
        assert result["steps"] == surface["steps"]
        assert result["loss"][-1] < result["loss"][0], result["name"]


def test_grid_samples_f_over_the_bounds():
    grid = client.get("/api/surfaces/ellipse/grid", params={"resolution": 11}).json()
    assert len(grid["x"]) == 11 and len(grid["y"]) == 11 and len(grid["z"]) == 11
    assert grid["x"][0] == -10.0 and grid["y"][-1] == 5.0
    assert grid["z"][-1][0] == pytest.approx(100 / 20 + 25)  # f(−10, 5): row = y, column = x
    notes = client.get("/api/surfaces/notes/grid", params={"resolution": 13}).json()
    assert notes["y"] is None and notes["z"][6] == 0.0  # x = 5, the minimum


@pytest.mark.parametrize("name", list(SURFACES))
def test_every_grid_is_finite_json(name):
    response = client.get(f"/api/surfaces/{name}/grid")
    assert response.status_code == 200
    assert all(math.isfinite(value) for row in response.json()["z"] for value in (row if isinstance(row, list)
                                                                                  else [row]))


def test_optimizers_carry_their_rules_defaults():
    optimizers = {info["name"]: info for info in client.get("/api/optimizers").json()}
    assert list(optimizers) == list(OPTIMIZERS)
    adam = {hp["name"]: hp for hp in optimizers["adam"]["hyperparameters"]}
    assert adam["betas"]["kind"] == "pair" and adam["betas"]["default"] == [0.9, 0.999]
    assert adam["lr"]["default"] == 1e-3 and adam["lr"]["scale"] == "log"
    nesterov = {hp["name"]: hp["default"] for hp in optimizers["nesterov"]["hyperparameters"]}
    assert nesterov["nesterov"] is True


def test_run_gives_the_numbers_of_optimlab_trace():
    """SPEC §6 through the API: Adam, lr 0.1, from x₀ = 0 on (2x − 10)², every quantity of every step."""
    response = client.post("/api/run", json={"surface": "notes", "start": [0.0], "steps": 10,
                                             "optimizers": [{"name": "adam", "hyperparameters": {"lr": 0.1}}]})
    assert response.status_code == 200, response.text
    result = response.json()["runs"][0]
    expected = trace("adam", notes_function(), start=[0.0], steps=10, lr=0.1)
    assert result["path"][0] == [0.0] and len(result["path"]) == 11
    # Equal to the last bit or two: the lab raises β to the power t on NumPy arrays, the trace on floats.
    for t, row in enumerate(expected, start=1):
        assert result["path"][t] == [pytest.approx(row["x"], rel=1e-13)]
        assert result["loss"][t] == pytest.approx(row["f"], rel=1e-13)
        for name in ("g", "m", "v", "m_hat", "v_hat", "alpha_t", "update"):
            assert result["trace"][name][t - 1] == [pytest.approx(row[name], rel=1e-12)], (name, t)
    assert result["path"][1][0] == pytest.approx(0.1, abs=1e-9)
    assert result["trace"]["alpha_t"][0][0] == pytest.approx(0.0316227766, abs=1e-10)
    assert result["diverged"] is False and result["message"] is None and result["steps"] == 10


def test_run_keeps_the_order_and_fills_in_defaults():
    response = client.post("/api/run", json={
        "surface": "ellipse", "steps": 5,
        "optimizers": [{"name": "sgd", "hyperparameters": {"lr": 0.95}}, {"name": "adamw"},
                       {"name": "sgd", "hyperparameters": {"lr": 0.1}}]})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["start"] == [-7.0, 2.0]
    assert [result["name"] for result in answer["runs"]] == ["sgd", "adamw", "sgd"]
    assert answer["runs"][0]["hyperparameters"] == {"lr": 0.95, "weight_decay": 0.0, "maximize": False}
    adamw = answer["runs"][1]["hyperparameters"]
    assert adamw["betas"] == [0.9, 0.999] and adamw["decoupled_weight_decay"] is True
    assert answer["runs"][0]["path"][1] == pytest.approx([-7 + 0.95 * 0.7, 2 - 0.95 * 4])


def test_a_diverging_run_is_cut_before_the_first_non_finite_value():
    response = _run(steps=300, optimizers=[{"name": "sgd", "hyperparameters": {"lr": 100.0}},
                                           {"name": "adam", "hyperparameters": {"lr": 0.3}}])
    assert response.status_code == 200
    assert "NaN" not in response.text and "Infinity" not in response.text
    sgd, adam = response.json()["runs"]
    assert sgd["diverged"] is True and 1 < sgd["steps"] < 300
    assert sgd["message"].startswith(f"diverged at step {sgd['steps'] + 1}: ")
    assert len(sgd["path"]) == len(sgd["loss"]) == sgd["steps"] + 1
    assert all(len(values) == sgd["steps"] for values in sgd["trace"].values())
    assert adam["diverged"] is False and adam["steps"] == 300


def test_a_run_that_overflows_at_once_keeps_only_the_start():
    response = _run(steps=10, optimizers=[{"name": "adam", "hyperparameters": {"lr": 1e300}}])
    result = response.json()["runs"][0]
    assert response.status_code == 200
    assert result["path"] == [[-7.0, 2.0]] and result["steps"] == 0 and result["diverged"] is True
    assert result["trace"]["g"] == []


def test_a_run_is_cut_where_any_traced_quantity_overflows_even_if_x_is_finite():
    """Rosenbrock's gradient grows as x³: after Adam's first step of ~1e60, g² overflows (v = inf), x does not."""
    response = client.post("/api/run", json={"surface": "rosenbrock", "steps": 10,
                                             "optimizers": [{"name": "adam", "hyperparameters": {"lr": 1e60}}]})
    result = response.json()["runs"][0]
    assert response.status_code == 200
    assert result["message"] == "diverged at step 2: v, v_hat became non-finite; shown up to step 1"
    assert result["steps"] == 1 and len(result["path"]) == 2 and len(result["trace"]["v"]) == 1


@pytest.mark.parametrize(("body", "location", "words"), [
    ({"surface": "moon"}, ("body", "surface"), "ellipse"),
    ({"steps": 0}, ("body", "steps"), "greater than or equal to 1"),
    ({"steps": MAX_STEPS + 1}, ("body", "steps"), f"{MAX_STEPS}"),
    ({"steps": 2.5}, ("body", "steps"), "integer"),
    ({"optimizers": []}, ("body", "optimizers"), "at least 1"),
    ({"optimizers": [{"name": "sgd"}] * (MAX_OPTIMIZERS + 1)}, ("body", "optimizers"), f"{MAX_OPTIMIZERS}"),
    ({"steps": MAX_STEPS, "optimizers": [{"name": "sgd"}] * 3}, ("body", "steps"), f"{MAX_TOTAL_STEPS}"),
    ({"optimizers": [{"name": "unknown"}]}, ("body", "optimizers", 0), "'adam'"),
    ({"optimizers": [{"name": "adam", "hyperparameters": {"lr": -1.0}}]},
     ("body", "optimizers", 0, "hyperparameters", "lr"), "Invalid lr: -1.0"),
    ({"optimizers": [{"name": "adam", "hyperparameters": {"lr": "0.1"}}]},
     ("body", "optimizers", 0, "adam", "hyperparameters", "lr"), "number"),
    ({"optimizers": [{"name": "adam", "hyperparameters": {"lr": True}}]},
     ("body", "optimizers", 0, "adam", "hyperparameters", "lr"), "number"),
    ({"optimizers": [{"name": "adam", "hyperparameters": {"betas": [1.0, 0.999]}}]},
     ("body", "optimizers", 0, "hyperparameters", "betas"), "Invalid betas[0]: 1.0"),
    ({"optimizers": [{"name": "adam", "hyperparameters": {"betas": [0.9]}}]},
     ("body", "optimizers", 0, "adam", "hyperparameters", "betas", 1), "required"),
    ({"optimizers": [{"name": "adam", "hyperparameters": {"beta1": 0.9}}]},
     ("body", "optimizers", 0, "adam", "hyperparameters", "beta1"), "Extra inputs"),
    ({"optimizers": [{"name": "sgd", "hyperparameters": {"momentum": 0.9}}]},
     ("body", "optimizers", 0, "sgd", "hyperparameters", "momentum"), "Extra inputs"),
    ({"optimizers": [{"name": "nesterov", "hyperparameters": {"momentum": 0.0}}]},
     ("body", "optimizers", 0, "hyperparameters", "nesterov"), "needs momentum > 0"),
    ({"optimizers": [{"name": "rmsprop", "hyperparameters": {"alpha": 1.0}}]},
     ("body", "optimizers", 0, "hyperparameters", "alpha"), "Invalid alpha"),
    ({"optimizers": [{"name": "adam", "hyperparameters": {"amsgrad": "yes"}}]},
     ("body", "optimizers", 0, "adam", "hyperparameters", "amsgrad"), "boolean"),
    ({"start": [100.0, 0.0]}, ("body", "start"), "outside ellipse's bounds"),
    ({"start": [1.0]}, ("body", "start"), "takes 2 coordinate(s)"),
    ({"start": [1.0, 2.0, 3.0]}, ("body", "start"), "at most 2"),
    ({"extra": 1}, ("body", "extra"), "Extra inputs"),
])
def test_bad_input_gets_422_naming_the_field(body, location, words):
    found_location, message = _error(_run(**body))
    assert found_location == location
    assert words in message


@pytest.mark.parametrize("text", ['{"surface": "ellipse", "optimizers": [{"name": "adam", "hyperparameters": '
                                  '{"lr": NaN}}]}',
                                  '{"surface": "ellipse", "start": [1e400, 0], "optimizers": [{"name": "sgd"}]}',
                                  '{"surface": "ellipse", "optimizers": [{"name": "adam"}',
                                  ''])
def test_non_finite_numbers_and_broken_json_get_422(text):
    response = client.post("/api/run", content=text, headers={"Content-Type": "application/json"})
    assert response.status_code == 422


def test_a_huge_body_is_refused_unread():
    response = client.post("/api/run", content=b" " * (MAX_BODY_BYTES + 1),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_an_endless_chunked_body_is_refused_at_the_limit():
    """Without a Content-Length the body is counted as it arrives: the server stops reading just past the limit
    (an endless stream, straight through ASGI, so nothing in between buffers it)."""
    chunk, pulled, sent = 65536, [], []

    async def receive():
        pulled.append(chunk)
        assert sum(pulled) <= 2 * MAX_BODY_BYTES, "the server kept reading past the limit"
        return {"type": "http.request", "body": b" " * chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/run", "raw_path": b"/api/run", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert b"request body over" in b"".join(message.get("body", b"") for message in sent[1:])
    assert sum(pulled) <= MAX_BODY_BYTES + chunk


def test_a_chunked_body_under_the_limit_is_answered():
    body = json.dumps({"surface": "ellipse", "optimizers": [{"name": "adam"}], "steps": 5}).encode()
    response = client.post("/api/run", content=iter([body[:10], body[10:]]),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 200


def test_the_largest_request_is_answered():
    response = _run(steps=MAX_TOTAL_STEPS // MAX_OPTIMIZERS, optimizers=[{"name": "adam"}] * MAX_OPTIMIZERS)
    assert response.status_code == 200
    assert len(response.json()["runs"]) == MAX_OPTIMIZERS


def test_openapi_documents_the_api():
    schema = client.get("/openapi.json").json()
    assert {"/api/run", "/api/surfaces", "/api/surfaces/{name}/grid", "/api/optimizers"} <= set(schema["paths"])
    components = schema["components"]["schemas"]
    request = components["RunRequest"]
    assert request["examples"][0]["surface"] == "ellipse"
    assert "steps × optimizers" in request["properties"]["optimizers"]["description"]
    assert request["properties"]["steps"]["maximum"] == MAX_STEPS
    adam = components["AdamHyperparameters"]["properties"]
    assert adam["lr"]["default"] == 1e-3 and "learning rate" in adam["lr"]["description"]
    assert "422" in schema["paths"]["/api/run"]["post"]["responses"]


def test_the_page_and_plotly_are_served_locally():
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="/vendor/plotly.min.js"' in page.text
    assert re.findall(r'(?:src|href)="(?!/|data:)([^"]*)"', page.text) == []  # nothing from the network
    plotly = client.get("/vendor/plotly.min.js")
    assert plotly.status_code == 200 and "javascript" in plotly.headers["content-type"]
    assert len(plotly.content) > 1_000_000
    for name in ("playground.js", "playground.css"):
        assert client.get(f"/static/{name}").status_code == 200


# --- schemathesis: generated requests against the OpenAPI schema never cause a server error ---------------

# schemathesis sends `Host: testserver`; the Host check has its own tests (test_guards.py).
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(check_host=False))


@schema.parametrize()
@settings(max_examples=40, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_no_generated_request_breaks_the_server(case):
    response = case.call_and_validate(checks=[not_a_server_error, status_code_conformance,
                                              response_schema_conformance])
    json.loads(response.text)  # valid JSON, whatever the input: no NaN or Infinity
