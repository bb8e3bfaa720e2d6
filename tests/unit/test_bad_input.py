"""Garbage at the entry points ends as a dead letter with a reason, never as a crash."""

from __future__ import annotations

import math

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.drift import Profile, drift
from consumers.join import JoinConfig, JoinCore
from schemas import ContractError, DeadLetter, MirroredRequest, ShadowOutput, decode

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=6)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_decoders_raise_only_contract_errors_on_any_bytes(data: bytes) -> None:
    for record_type in (MirroredRequest, ShadowOutput):
        try:
            decode(data, record_type)
        except ContractError as exc:
            assert exc.reason


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(["schema", "request_id", "model", "ts", "inputs",
                                        "live", "attrs", "candidate", "output"]),
                       json_values, max_size=9))
def test_decoders_on_wrongly_typed_documents(doc: dict) -> None:
    data = orjson.dumps(doc)
    for record_type in (MirroredRequest, ShadowOutput):
        try:
            decode(data, record_type)
        except ContractError as exc:
            assert exc.reason


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.one_of(st.none(), st.binary(max_size=20)),
                          st.binary(max_size=200)), min_size=1, max_size=20))
def test_the_join_dead_letters_garbage_and_keeps_going(messages: list) -> None:
    core = JoinCore(JoinConfig(window_ms=1000, grace_ms=0, max_event_bytes=150), {},
                    "req", "out")
    for offset, (is_request, key, value) in enumerate(messages):
        out = core.handle("req" if is_request else "out", 0, offset, key, value)
        dead = [decode(o.value, DeadLetter) for o in out if o.role == "deadletter"]
        assert len(dead) == 1 and dead[0].reason and dead[0].source.offset == offset
    assert core.stats.dead_lettered == len(messages)


def test_oversized_non_finite_and_unknown_schema_events_are_dead_letters() -> None:
    core = JoinCore(JoinConfig(max_event_bytes=2000), {}, "req", "out")
    big = orjson.dumps({"schema": "mirror.request/1", "pad": "x" * 3000})
    nan = (b'{"schema":"mirror.request/1","request_id":"r","model":"m","ts":1,"inputs":{},'
           b'"live":{"version":"v","latency_ms":NaN}}')
    future = orjson.dumps({"schema": "mirror.request/9", "request_id": "r"})
    reasons = []
    for i, data in enumerate((big, nan, future)):
        (o,) = core.handle("req", 0, i, b"k", data)
        reasons.append(decode(o.value, DeadLetter).reason)
    assert "over the limit of 2000" in reasons[0]
    assert reasons[1].startswith("malformed JSON")
    assert "unknown schema version 'mirror.request/9'" in reasons[2]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=20, max_size=200),
       st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200))
def test_drift_statistics_are_finite_and_bounded(ref: list[float], win: list[float]) -> None:
    profile = Profile.build([{"x": v} for v in ref], bins=20)
    hists = profile.histograms()
    for v in win:
        profile.observe(hists, {"x": v})
    out = drift(profile.features["x"].reference, hists["x"])
    assert all(math.isfinite(v) for v in out.values())
    assert 0 <= out["js"] <= 1 + 1e-9 and 0 <= out["ks"] <= 1 + 1e-9
    assert out["psi"] >= 0 and out["wasserstein"] >= 0


def test_no_pickle_on_any_event_or_model_path() -> None:
    """Events are JSON (orjson/pydantic), Faust's topics and table use raw bytes or orjson,
    and models load as TorchScript, torch.export or weights only: nothing unpickles."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offending = []
    for package in ("producers", "consumers", "shadow", "schemas"):
        for path in (root / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                    if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal",
                                               "shelve") for n in names):
                        offending.append(f"{path.name}:{node.lineno} imports pickle-like")
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "load"
                        and getattr(node.func.value, "id", None) == "torch"
                        and not any(k.arg == "weights_only" and getattr(k.value, "value", None)
                                    is True for k in node.keywords)):
                    offending.append(f"{path.name}:{node.lineno} torch.load without "
                                     "weights_only=True")
                if isinstance(node, ast.keyword) and node.arg in ("value_serializer",
                                                                  "key_serializer"):
                    value = getattr(node.value, "value", None)
                    if value not in ("raw", "orjson", "json"):
                        offending.append(f"{path.name}:{node.lineno} Faust serializer {value}")
    assert not offending, offending
