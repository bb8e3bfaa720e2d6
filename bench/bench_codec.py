"""Cost of decoding and validating a typical MirroredRequest, against bare orjson.loads.

Run: python -m bench.bench_codec
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson

import schemas
from bench._common import TARGETS, machine, median, per_call_us, verdict
from schemas import MirroredRequest, decode, encode


def main() -> None:
    example = json.loads(
        (Path(schemas.__file__).parent / "json" / "mirror.request.schema.json").read_text()
    )["examples"][0]
    data = orjson.dumps(example)
    record = decode(data, MirroredRequest)

    raw = per_call_us(lambda: orjson.loads(data))
    full = per_call_us(lambda: decode(data, MirroredRequest))
    enc = per_call_us(lambda: encode(record))

    print(f"machine: {machine()}")
    print(f"event: MirroredRequest, {len(data)} bytes")
    print(f"orjson.loads (reference)   median {median(raw):6.2f} us  "
          f"(min {min(raw):.2f}, max {max(raw):.2f})")
    print(f"decode + validate          median {median(full):6.2f} us  "
          f"(min {min(full):.2f}, max {max(full):.2f})  ratio {median(full) / median(raw):.1f}x")
    print(f"encode                     median {median(enc):6.2f} us")
    print(verdict("decode+validate us", median(full),
                  TARGETS["codec"]["decode_validate_mirrored_request_us"]))


if __name__ == "__main__":
    main()
