from __future__ import annotations

import hashlib
import math

import pytest

from producers.pii import PiiPolicy, keyed_hash
from producers.sampling import sample_threshold, sampled

KEY = b"0123456789abcdef"


def _doc() -> dict:
    return {
        "request_id": "r1",
        "inputs": {
            "email": "ada@example.com",
            "ssn": "123-45-6789",
            "amount": 12.5,
            "user": {"address": {"zip": "10115", "city": "Berlin"}, "age": 37},
            "items": [{"name": "lamp", "price": 3}, {"name": "desk", "price": 9}],
            "tags": ["a", "b"],
        },
        "attrs": {"tenant": "acme"},
    }


def test_keep_drop_and_hash_by_nested_path() -> None:
    policy = PiiPolicy({
        "inputs.email": "hash",
        "inputs.ssn": "drop",
        "inputs.user.address.zip": "hash",
        "inputs.items[*].name": "hash",
        "inputs.tags[*]": "hash",
        "attrs.tenant": "keep",
        "inputs.absent.field": "drop",
    }, key=KEY)
    out = policy.apply(_doc())
    ins = out["inputs"]
    assert "ssn" not in ins
    assert ins["email"] == keyed_hash("ada@example.com", KEY)
    assert ins["email"].startswith("h:") and len(ins["email"]) == 34
    assert ins["user"]["address"] == {"zip": keyed_hash("10115", KEY), "city": "Berlin"}
    assert [i["name"] for i in ins["items"]] == [keyed_hash("lamp", KEY), keyed_hash("desk", KEY)]
    assert [i["price"] for i in ins["items"]] == [3, 9]
    assert ins["tags"] == [keyed_hash("a", KEY), keyed_hash("b", KEY)]
    assert ins["amount"] == 12.5 and out["attrs"] == {"tenant": "acme"}


def test_hash_is_stable_keyed_blake2b() -> None:
    expected = "h:" + hashlib.blake2b(b"ada@example.com", key=KEY, digest_size=16).hexdigest()
    assert keyed_hash("ada@example.com", KEY) == expected
    assert keyed_hash("ada@example.com", KEY) != keyed_hash("ada@example.com", b"x" * 16)
    assert keyed_hash(42, KEY) == keyed_hash(42, KEY) != keyed_hash(43, KEY)


def test_drop_a_whole_list_and_a_subtree() -> None:
    out = PiiPolicy({"inputs.tags[*]": "drop", "inputs.user": "drop"}).apply(_doc())
    assert out["inputs"]["tags"] == [] and "user" not in out["inputs"]


@pytest.mark.parametrize(("rules", "key", "words"), [
    ({"inputs.email": "mask"}, KEY, "keep, drop or hash"),
    ({".inputs": "drop"}, KEY, "dotted field path"),
    ({"inputs.email": "hash"}, b"short", "at least 16 bytes"),
])
def test_bad_policies_are_refused(rules: dict, key: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        PiiPolicy(rules, key=key)


def test_sampling_is_deterministic_and_matches_its_definition() -> None:
    t = sample_threshold(0.3)
    for i in range(200):
        rid = f"req-{i}"
        h = int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=8).digest(), "big")
        assert sampled(rid, t) == (h < 0.3 * 2**64) == sampled(rid, t)


def test_sampling_rate_is_honoured_within_a_binomial_bound() -> None:
    n, rate = 20_000, 0.1
    hits = sum(sampled(f"id-{i}", sample_threshold(rate)) for i in range(n))
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(hits - n * rate) < 5 * sd


def test_sampling_edges() -> None:
    assert all(sampled(f"x{i}", sample_threshold(1.0)) for i in range(100))
    assert not any(sampled(f"x{i}", sample_threshold(0.0)) for i in range(100))
    with pytest.raises(ValueError):
        sample_threshold(1.5)
