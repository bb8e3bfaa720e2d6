"""Event contracts: typed records, the orjson codec and validation errors that name the field."""

from schemas.codec import decode, decode_event, dumps, encode, loads
from schemas.exceptions import ConfigError, ContractError, ShadowstreamError
from schemas.records import (
    Alert,
    DeadLetter,
    DivergencePair,
    MirroredRequest,
    ModelOutput,
    OutputKind,
    ShadowOutput,
    WindowSummary,
)

__all__ = [
    "Alert",
    "ConfigError",
    "ContractError",
    "DeadLetter",
    "DivergencePair",
    "MirroredRequest",
    "ModelOutput",
    "OutputKind",
    "ShadowOutput",
    "ShadowstreamError",
    "WindowSummary",
    "decode",
    "decode_event",
    "dumps",
    "encode",
    "loads",
]
