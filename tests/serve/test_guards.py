"""What any request may cost the playground: a foreign Host header, a body nested too deeply or holding a lone
surrogate, a strict type, a run past the bound in flight, a body that never arrives — each a 4xx or a 503,
never a 500."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from optimlab.serve import create_app
from optimlab.serve.guards import loopback_host

app = create_app()
client = TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False)
SMALL_RUN = {"surface": "ellipse", "steps": 3, "optimizers": [{"name": "adam"}]}


def _post(text: str):
    return client.post("/api/run", content=text, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "LOCALHOST", "127.0.0.1", "127.0.0.1:8000",
                                  "127.0.0.2:80", "[::1]", "[::1]:8000"])
def test_loopback_names_are_this_machine(host):
    assert loopback_host(host)


@pytest.mark.parametrize("host", ["", "evil.example", "evil.example:8000", "localhost.evil.example",
                                  "127.0.0.1.evil.example", "10.0.0.1", "[::2]:8000", "[::1", "0.0.0.0"])
def test_other_names_are_not(host):
    assert not loopback_host(host)


@pytest.mark.parametrize("path", ["/", "/api/surfaces", "/openapi.json"])
def test_a_foreign_host_header_is_refused(path):
    response = client.get(path, headers={"Host": "rebound.evil.example"})
    assert response.status_code == 400
    assert "rebound.evil.example" in response.json()["detail"] and "DNS rebinding" in response.json()["detail"]


def test_without_the_host_check_any_host_is_answered():
    """`optimlab serve --host 0.0.0.0`: the user exposed the page on purpose, under names we cannot know."""
    exposed = TestClient(create_app(check_host=False))
    assert exposed.get("/api/surfaces", headers={"Host": "lab.example"}).status_code == 200


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [500, 5000, 100_000])
@pytest.mark.parametrize("field", ["extra", "start", "steps", "optimizers"])
def test_a_deeply_nested_body_is_422(field, depth):
    """~500 levels in a 1 kB body made the error's echo of the input exhaust the recursion (500); deeper ones
    exhaust the JSON parser's (400). Both are invalid requests."""
    body = {**SMALL_RUN, field: "NESTED"}
    response = _post(json.dumps(body).replace('"NESTED"', _nested(depth)))
    assert response.status_code == 422, response.text[:200]
    assert response.json()["detail"][0]["loc"][0] == "body"


def test_nesting_inside_the_hyperparameters_is_422():
    body = json.dumps({**SMALL_RUN, "optimizers": [{"name": "adam", "hyperparameters": {"lr": "NESTED"}}]})
    assert _post(body.replace('"NESTED"', _nested(500))).status_code == 422


@pytest.mark.parametrize("text", [
    '{"surface": "\\ud800", "optimizers": [{"name": "adam"}]}',
    '{"surface": "ellipse", "optimizers": [{"name": "adam"}], "\\udc00": 1}',
    '{"surface": "ellipse", "optimizers": [{"name": "\\udfff"}]}',
    '{"surface": "ellipse", "optimizers": [{"name": "adam", "hyperparameters": {"lr": "\\ud83d"}}]}',
    '{"surface": "ellipse", "optimizers": [{"name": "adam", "hyperparameters": {"\\ud800x": 1.0}}]}',
])
def test_a_lone_surrogate_is_422(text):
    """A lone surrogate is valid JSON but cannot be written back as UTF-8: echoing it in the 422 was a 500."""
    response = _post(text)
    assert response.status_code == 422
    assert "\\u" in response.text or "\\\\ud" in response.text  # echoed escaped, as text


@pytest.mark.parametrize("steps", [True, False, 30.0, "30"])
def test_steps_must_be_a_whole_number_not_a_lookalike(steps):
    response = client.post("/api/run", json={**SMALL_RUN, "steps": steps})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "steps"]


def _scope(method: str, path: str, body: bytes = b"") -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}


async def _call(application, method: str, path: str, body: bytes = b"", arrived: asyncio.Event | None = None):
    """One request straight through ASGI: (status, headers, body). With `arrived`, the body comes only once that
    event is set (a run whose request is still arriving holds its slot)."""
    sent: list[dict] = []
    waiting = asyncio.Event()

    async def receive() -> dict:
        if sent:  # after the answer: the client leaves
            await asyncio.Event().wait()
        if arrived is not None:
            waiting.set()
            await arrived.wait()
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    task = asyncio.ensure_future(application(_scope(method, path, body), receive, send))
    if arrived is not None:
        await waiting.wait()
        return task
    await task
    headers = {key.decode(): value.decode() for key, value in sent[0].get("headers", [])}
    return sent[0]["status"], headers, b"".join(message.get("body", b"") for message in sent[1:])


def test_runs_past_the_bound_get_503_with_retry_after_and_small_requests_pass():
    bounded = create_app(max_runs_in_flight=1)
    body = json.dumps(SMALL_RUN).encode()

    async def scenario() -> None:
        arrived = asyncio.Event()
        first = await _call(bounded, "POST", "/api/run", body, arrived=arrived)  # holds the only slot
        status, headers, answer = await _call(bounded, "POST", "/api/run", body)
        assert status == 503 and headers["retry-after"] == "1" and b"busy" in answer
        assert (await _call(bounded, "GET", "/api/surfaces/ellipse/grid"))[0] == 503
        assert (await _call(bounded, "GET", "/api/surfaces"))[0] == 200
        assert (await _call(bounded, "GET", "/api/optimizers"))[0] == 200
        arrived.set()
        await first
        assert (await _call(bounded, "POST", "/api/run", body))[0] == 200  # the slot is free again

    asyncio.run(scenario())


def test_a_body_that_never_arrives_gets_408():
    patient = create_app(body_timeout=0.2)
    sent: list[dict] = []

    async def receive() -> dict:
        await asyncio.Event().wait()
        return {}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(patient(_scope("POST", "/api/run", b"{}"), receive, send), timeout=30))
    assert sent[0]["status"] == 408
    assert b"not received within 0.2 s" in sent[1]["body"]
