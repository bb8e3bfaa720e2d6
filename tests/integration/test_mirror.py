"""The mirror client and its capture helpers against the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from producers import AsyncMirror, Mirror, MirrorASGIMiddleware, MirrorConfig, MirrorWSGIMiddleware
from producers import capture as capture_fn
from schemas import MirroredRequest
from shadow.stack import Endpoints
from tests.helpers import consume_events, murmur2_partition


def _config(stack: Endpoints, topic: str, **kw: object) -> MirrorConfig:
    return MirrorConfig(bootstrap=stack.kafka_bootstrap, topic=topic, model="fraud",
                        live_version="v7", **kw)


def _events(consumer_factory: Callable, topic: str, n: int) -> dict[str, tuple]:
    """Each event by request id, with the record it came in (alone or in a batch)."""
    got = consume_events(consumer_factory, topic, MirroredRequest, n)
    return {req.request_id: (req, msg) for req, msg in got}


@pytest.mark.parametrize("batch_events", [1, 100])
def test_published_events_arrive_intact_on_the_java_partition(
    stack: Endpoints, topic_factory: Callable[..., str], consumer_factory: Callable,
    batch_events: int,
) -> None:
    topic = topic_factory(partitions=3)
    reg = CollectorRegistry()
    with Mirror(_config(stack, topic, output_kind="probs", compression="zstd",
                        batch_events=batch_events), reg) as m:
        for i in range(60):
            assert m.publish(f"req-{i}", {"amount": i * 1.5, "country": "DE"}, [0.9, 0.1],
                             latency_ms=2.5, ts=1_700_000_000_000 + i, segment="eu",
                             trace_id=f"trace-{i}" if i % 2 else None)
    counts = m.metrics.snapshot()
    assert counts.attempted == counts.published == 60 and counts.settled

    events = _events(consumer_factory, topic, 60)
    assert len(events) == 60
    records = {(msg.partition(), msg.offset()) for _, msg in events.values()}
    for i in range(60):
        req, msg = events[f"req-{i}"]
        assert req.inputs == {"amount": i * 1.5, "country": "DE"}
        assert req.live.output is not None and req.live.output.kind == "probs"
        assert req.live.output.value == [0.9, 0.1]
        assert (req.live.version, req.live.latency_ms, req.ts) == ("v7", 2.5,
                                                                   1_700_000_000_000 + i)
        assert req.attrs is not None and req.attrs.segment == "eu"
        assert req.attrs.trace_id == (f"trace-{i}" if i % 2 else None)
        # Each event on the partition Java's partitioner gives its request id, batched or not.
        assert msg.partition() == murmur2_partition(f"req-{i}".encode(), 3)
        headers = dict(msg.headers())
        assert headers["model"] == b"fraud"
        if batch_events == 1:
            assert headers["schema"] == b"mirror.request/1"
            assert headers.get("trace_id") == (f"trace-{i}".encode() if i % 2 else None)
            assert msg.key() == f"req-{i}".encode()
    if batch_events == 1:
        assert len(records) == 60
    else:  # one record per partition per shipper batch: a handful, not one per event
        assert len(records) <= 10


def test_async_mirror(stack: Endpoints, topic_factory: Callable[..., str],
                      consumer_factory: Callable) -> None:
    topic = topic_factory(partitions=1)

    async def service() -> AsyncMirror:
        async with AsyncMirror(_config(stack, topic), CollectorRegistry()) as m:
            for i in range(10):
                m.publish(f"a-{i}", {"x": i}, float(i))
                await asyncio.sleep(0)
        return m

    m = asyncio.run(service())
    assert m.metrics.snapshot().published == 10
    events = _events(consumer_factory, topic, 10)
    assert sorted(events) == sorted(f"a-{i}" for i in range(10))


def test_capture_decorator_records_answers_and_reraises_unchanged(
    stack: Endpoints, topic_factory: Callable[..., str], consumer_factory: Callable
) -> None:
    topic = topic_factory(partitions=1)
    m = Mirror(_config(stack, topic), CollectorRegistry())

    class Refused(Exception):
        pass

    @capture_fn(m, request_id=lambda features, **_: features["id"])
    def predict(features: dict) -> float:
        if features["x"] < 0:
            raise Refused("negative input")
        return features["x"] * 2.0

    assert predict({"id": "ok-1", "x": 3.0}) == 6.0
    with pytest.raises(Refused, match="negative input") as info:
        predict({"id": "bad-1", "x": -1.0})
    assert type(info.value) is Refused
    m.close()
    events = _events(consumer_factory, topic, 2)
    ok, bad = events["ok-1"][0], events["bad-1"][0]
    assert ok.inputs == {"id": "ok-1", "x": 3.0}
    assert ok.live.output is not None and ok.live.output.value == 6.0 and ok.live.error is None
    assert ok.live.latency_ms >= 0
    assert bad.live.output is None and bad.live.error == "Refused: negative input"


def _starlette_app(mirror: Mirror):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("boom"):
            raise RuntimeError("model crashed")
        return JSONResponse({"prediction": [1 - body["p"], body["p"]], "version": "v7"})

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    return MirrorASGIMiddleware(app, mirror, paths=["/predict"], output_field="prediction")


def test_asgi_middleware_with_a_real_starlette_app(
    stack: Endpoints, topic_factory: Callable[..., str], consumer_factory: Callable
) -> None:
    from starlette.testclient import TestClient

    topic = topic_factory(partitions=1)
    m = Mirror(_config(stack, topic, output_kind="probs"), CollectorRegistry())
    client = TestClient(_starlette_app(m), raise_server_exceptions=False)
    answers = {}
    for i in range(5):
        resp = client.post("/predict", json={"p": i / 10}, headers={"x-request-id": f"h-{i}"})
        assert resp.status_code == 200
        answers[f"h-{i}"] = resp.json()["prediction"]
    assert client.post("/predict", json={"p": 0.5, "boom": True},
                       headers={"x-request-id": "h-err"}).status_code == 500
    assert client.get("/predict").status_code == 405  # not mirrored: GET
    m.close()
    events = _events(consumer_factory, topic, 6)
    assert set(events) == {*answers, "h-err"}
    for rid, answer in answers.items():
        req = events[rid][0]
        assert req.live.output is not None and req.live.output.value == answer
        assert req.inputs == {"p": int(rid[2:]) / 10}
    err = events["h-err"][0]
    assert err.live.output is None and err.live.error == "RuntimeError: model crashed"


def test_wsgi_middleware_with_a_real_flask_app(
    stack: Endpoints, topic_factory: Callable[..., str], consumer_factory: Callable
) -> None:
    from flask import Flask, jsonify, request

    topic = topic_factory(partitions=1)
    m = Mirror(_config(stack, topic), CollectorRegistry())
    app = Flask(__name__)

    @app.post("/score")
    def score():
        body = request.get_json()
        return jsonify({"score": body["a"] + body["b"]})

    app.wsgi_app = MirrorWSGIMiddleware(app.wsgi_app, m, output_field="score")
    client = app.test_client()
    answers = {}
    for i in range(5):
        resp = client.post("/score", json={"a": i, "b": 0.5}, headers={"X-Request-ID": f"f-{i}"})
        assert resp.status_code == 200
        answers[f"f-{i}"] = resp.get_json()["score"]
    m.close()
    events = _events(consumer_factory, topic, 5)
    assert {rid: e[0].live.output.value for rid, e in events.items()} == answers
    assert events["f-3"][0].inputs == {"a": 3, "b": 0.5}


def test_middlewares_mirror_a_text_and_a_json_service_as_such(
    stack: Endpoints, topic_factory: Callable[..., str], consumer_factory: Callable
) -> None:
    """A generative service answering plain text (Flask), and a JSON service whose whole
    response is the answer (Starlette): mirrored as text and as the document."""
    from flask import Flask
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    text_topic, json_topic = topic_factory(partitions=2), topic_factory(partitions=2)
    chat = Mirror(_config(stack, text_topic, output_kind="text"), CollectorRegistry())
    app = Flask("chat")

    @app.post("/reply")
    def reply() -> tuple[str, int, dict[str, str]]:
        from flask import request

        said = request.get_json()["message"]
        # A text that parses as JSON, and an empty one, are texts like any other.
        text = {"hello 1": "42", "hello 2": ""}.get(said, f"you said: {said}")
        return text, 200, {"Content-Type": "text/plain"}

    app.wsgi_app = MirrorWSGIMiddleware(app.wsgi_app, chat, output_field=None)
    flask_client = app.test_client()
    want = {"t-0": "you said: hello 0", "t-1": "42", "t-2": "", "t-3": "you said: hello 3"}
    for i in range(4):  # the body read, as a server sends it: the middleware mirrors then
        assert flask_client.post("/reply", json={"message": f"hello {i}"},
                                 headers={"X-Request-ID": f"t-{i}"}).get_data() == \
            want[f"t-{i}"].encode()
    chat.close()
    assert chat.metrics.snapshot().published == 4, chat.metrics.snapshot()

    quotes = Mirror(_config(stack, json_topic, output_kind="json"), CollectorRegistry())

    async def quote(request: Any) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"price": 2.5 * body["kg"], "service": "parcel", "kind": "std"})

    client = TestClient(MirrorASGIMiddleware(Starlette(routes=[Route("/quote", quote,
                                                                     methods=["POST"])]),
                                             quotes, output_field=None))
    for i in range(4):
        assert client.post("/quote", json={"kg": i},
                           headers={"X-Request-ID": f"q-{i}"}).status_code == 200
    quotes.close()
    assert quotes.metrics.snapshot().published == 4, quotes.metrics.snapshot()
    texts = _events(consumer_factory, text_topic, 4)
    assert {rid: (e[0].live.output.kind, e[0].live.output.value)
            for rid, e in texts.items()} == {rid: ("text", text) for rid, text in want.items()}
    docs = _events(consumer_factory, json_topic, 4)
    assert docs["q-2"][0].live.output.kind == "json"
    assert docs["q-2"][0].live.output.value == {"price": 5.0, "service": "parcel",
                                                 "kind": "std"}
