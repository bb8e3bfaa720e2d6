"""The mirror client with no broker at all: it must never raise, block or grow without bound."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from producers import Mirror, MirrorConfig, PiiPolicy
from schemas import ConfigError
from shadow.stack.procs import free_port


def _mirror(**kw: object) -> Mirror:
    cfg = MirrorConfig(bootstrap=f"127.0.0.1:{free_port()}", model="m", message_timeout_ms=500,
                       log_interval_s=60, **kw)
    return Mirror(cfg, CollectorRegistry())


def test_bad_input_is_counted_never_raised() -> None:
    m = _mirror(max_event_bytes=1000)
    assert not m.publish("", {"a": 1})
    assert not m.publish(None, {"a": 1})  # type: ignore[arg-type]
    assert not m.publish("r3", 12)  # type: ignore[arg-type]  (inputs not a mapping)
    # Accepted, then dropped by the shipper: publish() never serializes on the caller's thread.
    assert m.publish("r1", {"a": object()})
    assert m.publish("r2", {"a": "x" * 2000})
    assert m.publish("r4", {"a": 1}, 0.5)
    m.flush(0.5)  # let the shipper take them (no broker: r4 stays in librdkafka's queue)
    m.close(timeout_s=0)
    assert not m.publish("r5", {"a": 1})
    counts = m.metrics.snapshot()
    assert counts.dropped == {"invalid": 3, "serialization": 1, "too_large": 1, "closed": 1}
    assert counts.attempted == 7
    assert counts.settled  # r4 was purged at close and counts as delivery_failed
    assert counts.delivery_failed == 1


def test_full_buffer_drops_by_policy_without_blocking() -> None:
    m = _mirror(max_queue_messages=100)
    t0 = time.perf_counter()
    accepted = sum(m.publish(f"r{i}", {"i": i}) for i in range(1000))
    elapsed = time.perf_counter() - t0
    # The hand-off buffer holds 100 and librdkafka's queue 100 more: nothing else fits.
    assert 100 <= accepted <= 200
    assert m.metrics.snapshot().dropped == {"queue_full": 1000 - accepted}
    assert elapsed < 2.0  # a thousand calls; a blocking publish would wait on the timeout
    m.close(timeout_s=0)
    counts = m.metrics.snapshot()
    assert counts.settled and counts.delivery_failed == accepted


def test_pause_policy_sheds_load_until_the_pause_ends() -> None:
    m = _mirror(max_queue_messages=10, drop_policy="pause", pause_ms=300)
    accepted = sum(m.publish(f"r{i}", {"i": i}) for i in range(30))
    assert 10 <= accepted <= 20
    assert m.metrics.snapshot().dropped == {"queue_full": 1, "paused": 29 - accepted}
    time.sleep(0.35)  # after the pause, publish() accepts again (the buffer had room)
    m._buffer.clear()  # make room without a broker: only the pause is tested
    assert m.publish("after", {"i": 0})
    m.close(timeout_s=0)


def test_publish_copies_the_top_level_of_inputs() -> None:
    import orjson

    m = _mirror()
    m._stop.set()  # park the shipper: the event waits in the buffer
    m._shipper.join(5)
    inputs = {"a": 1}
    assert m.publish("r1", inputs, 0.5)
    inputs["a"] = 2  # the caller reuses its dict at once
    inputs["b"] = 3
    value = m._encode(m._buffer[0])
    assert value is not None and orjson.loads(value)["inputs"] == {"a": 1}
    m.close(timeout_s=0)
    assert m.metrics.snapshot().delivery_failed == 1  # never shipped: counted at close


def test_undeliverable_events_end_as_delivery_failed() -> None:
    m = _mirror()
    for i in range(20):
        assert m.publish(f"r{i}", {"i": i}, i)
    deadline = time.monotonic() + 10
    while not m.metrics.snapshot().settled and time.monotonic() < deadline:
        time.sleep(0.1)
    counts = m.metrics.snapshot()
    assert counts.delivery_failed == 20 and counts.published == 0 and counts.settled
    m.close()


def test_sample_rate_counts_the_rest_as_sampled_out() -> None:
    m = _mirror(sample_rate=0.25)
    for i in range(400):
        m.publish(f"req-{i}", {"i": i})
    c = m.metrics.snapshot()
    assert c.attempted + c.sampled_out == 400
    assert 50 < c.attempted < 150
    m.close(timeout_s=0)


def test_two_mirrors_share_a_registry_by_model_label() -> None:
    reg = CollectorRegistry()
    port = free_port()
    a = Mirror(MirrorConfig(bootstrap=f"127.0.0.1:{port}", model="a"), reg)
    b = Mirror(MirrorConfig(bootstrap=f"127.0.0.1:{port}", model="b"), reg)
    a.publish("", {})
    assert a.metrics.snapshot().attempted == 1 and b.metrics.snapshot().attempted == 0
    a.close(0)
    b.close(0)


@pytest.mark.parametrize("policy", ["drop", "pause"])
def test_config_is_validated(policy: str) -> None:
    with pytest.raises(ValueError):
        MirrorConfig(bootstrap="x:1", model="m", sample_rate=2.0, drop_policy=policy)


def test_counts_are_exposed_in_the_callers_registry() -> None:
    from prometheus_client import generate_latest

    reg = CollectorRegistry()
    m = Mirror(MirrorConfig(bootstrap=f"127.0.0.1:{free_port()}", model="fraud"), reg)
    m.publish("", {})
    m.publish("r1", {"a": object()})
    m.publish("r2", {"a": 1})
    m.flush(0.5)  # the shipper serializes (and counts the failure) off the caller's thread
    text = generate_latest(reg).decode()
    assert 'shadow_mirror_attempted_total{model="fraud"} 3.0' in text
    assert 'shadow_mirror_dropped_total{model="fraud",reason="invalid"} 1.0' in text
    assert 'shadow_mirror_dropped_total{model="fraud",reason="serialization"} 1.0' in text
    assert 'shadow_mirror_publish_seconds_count{model="fraud"} 3.0' in text
    assert reg.get_sample_value("shadow_mirror_published_total", {"model": "fraud"}) == 0
    m.close(timeout_s=0)
    assert reg.get_sample_value("shadow_mirror_delivery_failed_total", {"model": "fraud"}) == 1


def test_pii_policy_never_touches_the_callers_objects() -> None:
    from producers import PiiPolicy

    m = _mirror(pii=PiiPolicy({"inputs.user.email": "hash", "inputs.ssn": "drop"},
                              key=b"k" * 16))
    inputs = {"user": {"email": "a@b.c"}, "ssn": "1", "amount": 2}
    assert m.publish("r1", inputs)
    assert inputs == {"user": {"email": "a@b.c"}, "ssn": "1", "amount": 2}
    m.close(timeout_s=0)


@pytest.mark.parametrize("middleware", ["MirrorASGIMiddleware", "MirrorWSGIMiddleware"])
def test_a_middleware_must_be_told_where_the_answer_is(middleware: str) -> None:
    import producers

    cls = getattr(producers, middleware)
    m = _mirror()
    try:
        # As docs/service-owners.md once showed it: every event was then dead-lettered by
        # the worker, the response {"score": 0.9} not being an answer.
        with pytest.raises(ConfigError, match=f"{middleware}: say where the model's answer "
                                              "is in the JSON response: output_field="):
            cls(lambda *a: None, mirror=m)
        cls(lambda *a: None, mirror=m, output_field="score")
        cls(lambda *a: None, mirror=m, output_field=None)  # the whole response
        cls(lambda *a: None, mirror=m, extract=lambda req, resp: (req, resp["score"]))
    finally:
        m.close(timeout_s=0)


def test_an_answer_that_is_not_a_model_output_is_dropped_with_the_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    m = _mirror(output_kind="probs")
    m._stop.set()  # park the shipper: encode by hand
    m._shipper.join(5)
    for rid, answer in (("a", {"score": 0.9}), ("b", 0.7), ("c", []), ("d", ["x"])):
        assert m.publish(rid, {"x": 1}, answer)
    with caplog.at_level("WARNING", logger="shadowstream.mirror"):
        assert [m._encode(item) for item in list(m._buffer)] == [None] * 4
    assert m.metrics.snapshot().dropped["invalid_output"] == 4
    assert "is not a model output" in caplog.text and "output_field" in caplog.text
    good = [m._encode((*m._buffer[0][:2], [0.2, 0.8], *m._buffer[0][3:]))]
    assert good[0] is not None
    m.close(timeout_s=0)


def test_the_pii_key_may_be_a_str_and_anything_else_is_refused() -> None:
    from producers.pii import keyed_hash

    as_text = PiiPolicy({"inputs.email": "hash"}, key="a-secret-of-16-chars")
    as_bytes = PiiPolicy({"inputs.email": "hash"}, key=b"a-secret-of-16-chars")
    doc = {"inputs": {"email": "a@b.c"}}
    assert as_text.apply(dict(doc, inputs=dict(doc["inputs"]))) == \
        as_bytes.apply(dict(doc, inputs=dict(doc["inputs"])))
    assert keyed_hash("x", as_text.key) == keyed_hash("x", b"a-secret-of-16-chars")
    with pytest.raises(ConfigError, match="key must be bytes or a str, got int"):
        PiiPolicy({"inputs.email": "hash"}, key=1234567890123456)  # type: ignore[arg-type]


def test_the_mirror_writes_to_the_prefix_of_shadow_topic_prefix(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOW_TOPIC_PREFIX", "team-a")
    assert MirrorConfig(bootstrap="b:9092", model="m").topic == "team-a.requests"
    monkeypatch.delenv("SHADOW_TOPIC_PREFIX")
    assert MirrorConfig(bootstrap="b:9092", model="m").topic == "shadow.requests"
    assert MirrorConfig(bootstrap="b:9092", model="m", topic="x").topic == "x"


@pytest.mark.parametrize(("kind", "answer", "expected"), [
    ("text", "Your parcel ships on Monday.", "Your parcel ships on Monday."),
    ("json", {"status": "ok", "kind": "express"}, {"status": "ok", "kind": "express"}),
    ("json", [{"sku": "a1"}], [{"sku": "a1"}]),
    # An answer already written as the contract writes it is taken as it is.
    ("json", {"kind": "json", "value": {"a": 1}}, {"a": 1}),
])
def test_text_and_json_answers_are_mirrored_as_such(kind: str, answer: object,
                                                     expected: object) -> None:
    import orjson

    m = _mirror(output_kind=kind)
    m._stop.set()  # park the shipper: encode by hand
    m._shipper.join(5)
    assert m.publish("r1", {"prompt": "when?"}, answer)
    doc = orjson.loads(m._encode(m._buffer[0]))  # type: ignore[arg-type]
    assert doc["live"]["output"] == {"kind": kind, "value": expected}
    m.close(timeout_s=0)


@pytest.mark.parametrize(("kind", "answer", "words"), [
    ("text", 3, "a text answer must be a string"),
    ("json", "ok", "a json answer must be a JSON object or array"),
])
def test_a_text_or_json_answer_of_the_wrong_type_is_dropped_with_the_reason(
        kind: str, answer: object, words: str, caplog: pytest.LogCaptureFixture) -> None:
    m = _mirror(output_kind=kind)
    m._stop.set()
    m._shipper.join(5)
    assert m.publish("r1", {"x": 1}, answer)
    with caplog.at_level("WARNING", logger="shadowstream.mirror"):
        assert m._encode(m._buffer[0]) is None
    assert m.metrics.snapshot().dropped["invalid_output"] == 1 and words in caplog.text
    m.close(timeout_s=0)
