"""Typed records for every event on the wire.

The JSON Schema files in ``schemas/json`` are the published contract; these models accept and
reject the same documents (``tests/unit/test_schemas.py`` checks both against each other) and
are what the code works with.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool

OutputKind = Literal["scalar", "vector", "probs", "scores", "embedding", "text", "json"]
OUTPUT_KINDS: frozenset[str] = frozenset(get_args(OutputKind))
"""The output kinds, for checks that do not go through the typed records."""
AlertState = Literal["ok", "pending", "firing", "resolved"]
Severity = Literal["info", "warning", "critical"]

NonEmptyStr = Annotated[str, Field(min_length=1, max_length=256)]
EpochMs = Annotated[int, Field(ge=0)]
Millis = Annotated[float, Field(ge=0)]
Numbers = Annotated[list[float], Field(min_length=1)]


class _Record(BaseModel):
    # Unknown fields are ignored so that a newer producer does not break an older consumer.
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    SCHEMA: ClassVar[str]


class ScalarOutput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)
    kind: Literal["scalar"] = "scalar"
    value: float


class VectorOutput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)
    kind: Literal["vector"] = "vector"
    value: Numbers


class ProbsOutput(BaseModel):
    """Class probabilities; ``labels`` names the classes when the model has names for them."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)
    kind: Literal["probs"] = "probs"
    value: Numbers
    labels: list[str] | None = None


class ScoresOutput(BaseModel):
    """Ranking scores, one per item; ``items`` are the item ids (index order when absent)."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)
    kind: Literal["scores"] = "scores"
    value: Numbers
    items: list[str] | None = None


class EmbeddingOutput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)
    kind: Literal["embedding"] = "embedding"
    value: Numbers


def _json_document(value: Any) -> Any:
    if not isinstance(value, dict | list):
        raise ValueError("must be a JSON object or array")
    return value


class TextOutput(BaseModel):
    """A generated text (compared after a documented normalisation, see consumers.compare)."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)
    kind: Literal["text"] = "text"
    value: Annotated[str, Field(max_length=1_000_000)]


class JsonOutput(BaseModel):
    """A JSON document (an object or an array), compared field by field by JSON path."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)
    kind: Literal["json"] = "json"
    value: Annotated[Any, AfterValidator(_json_document)]


ModelOutput = Annotated[
    ScalarOutput | VectorOutput | ProbsOutput | ScoresOutput | EmbeddingOutput | TextOutput
    | JsonOutput,
    Field(discriminator="kind"),
]


class LiveAnswer(BaseModel):
    """What the production model answered (or the error it raised)."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)
    version: NonEmptyStr
    output: ModelOutput | None = None
    latency_ms: Millis
    error: str | None = None


class RequestAttrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    segment: str | None = None
    tenant: str | None = None
    trace_id: str | None = None


class MirroredRequest(_Record):
    """A production request and the live model's answer, mirrored by the service."""

    SCHEMA: ClassVar[str] = "mirror.request/1"
    schema_: Literal["mirror.request/1"] = Field("mirror.request/1", alias="schema")
    request_id: NonEmptyStr
    model: NonEmptyStr
    ts: EpochMs
    inputs: dict[str, Any]
    live: LiveAnswer
    attrs: RequestAttrs | None = None


class ShadowOutput(_Record):
    """A candidate model's answer to one mirrored request."""

    SCHEMA: ClassVar[str] = "shadow.output/1"
    schema_: Literal["shadow.output/1"] = Field("shadow.output/1", alias="schema")
    request_id: NonEmptyStr
    model: NonEmptyStr
    ts: EpochMs
    candidate: NonEmptyStr
    output: ModelOutput | None = None
    latency_ms: Millis
    error: str | None = None
    control: StrictBool | None = None
    """True for a control: a second copy of the live model, whose divergence from live is the noise
    floor the other candidates of the model are judged against."""


class DivergencePair(_Record):
    """The live and candidate answers to one request, compared."""

    SCHEMA: ClassVar[str] = "divergence.pair/1"
    schema_: Literal["divergence.pair/1"] = Field("divergence.pair/1", alias="schema")
    request_id: NonEmptyStr
    model: NonEmptyStr
    ts: EpochMs
    candidate: NonEmptyStr
    kind: OutputKind | None = None
    segment: str | None = None
    score: float | None = None
    disagree: bool
    metrics: dict[str, float] = Field(default_factory=dict)
    live_latency_ms: Millis
    candidate_latency_ms: Millis
    live_error: str | None = None
    candidate_error: str | None = None


class LatencySummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)
    live_p50: float | None = None
    live_p99: float | None = None
    candidate_p50: float | None = None
    candidate_p99: float | None = None


class ControlSummary(BaseModel):
    """The control's numbers in the same window (and segment), beside a candidate's: the
    noise floor its divergence is judged against."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)
    candidate: NonEmptyStr
    """The control's name."""
    compared: Annotated[int, Field(ge=0)]
    disagreements: Annotated[int, Field(ge=0)]
    disagreement_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    excess_disagreement_rate: Annotated[float, Field(ge=-1, le=1)] | None = None
    """The candidate's disagreement rate minus the control's."""
    divergence: dict[str, float] = Field(default_factory=dict)
    """The control's divergence statistics (as the candidate's ``divergence``)."""


class WindowSummary(_Record):
    """Everything measured for one closed event-time window of one model and candidate."""

    SCHEMA: ClassVar[str] = "window.summary/1"
    schema_: Literal["window.summary/1"] = Field("window.summary/1", alias="schema")
    model: NonEmptyStr
    candidate: NonEmptyStr
    segment: str | None = None
    ts: EpochMs
    window_start: EpochMs
    window_end: EpochMs
    requests: Annotated[int, Field(ge=0)]
    pairs: Annotated[int, Field(ge=0)]
    unmatched_live: Annotated[int, Field(ge=0)] = 0
    unmatched_shadow: Annotated[int, Field(ge=0)] = 0
    dead_lettered: Annotated[int, Field(ge=0)] = 0
    candidate_errors: Annotated[int, Field(ge=0)] = 0
    coverage: Annotated[float, Field(ge=0, le=1)] | None = None
    disagreement_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    divergence: dict[str, float] = Field(default_factory=dict)
    latency: LatencySummary = Field(default_factory=LatencySummary)
    drift: dict[str, dict[str, float]] = Field(default_factory=dict)
    undefined_statistics: Annotated[int, Field(ge=0)] = 0
    """Statistics that could not be computed on this window: left out, never NaN."""
    state: dict[str, Any] | None = None
    """Mergeable counts, sketches and histograms (consumers.windows.WindowAggregate)."""
    is_control: StrictBool | None = None
    """True when this candidate is a control (a second copy of the live model)."""
    control: ControlSummary | None = None
    """The model's control in the same window, when it has one: rules and verdicts then
    judge this candidate's excess over it."""


class Alert(_Record):
    """One transition of one alert rule for one model and candidate."""

    SCHEMA: ClassVar[str] = "alert/1"
    schema_: Literal["alert/1"] = Field("alert/1", alias="schema")
    alert_id: NonEmptyStr
    model: NonEmptyStr
    candidate: NonEmptyStr
    ts: EpochMs
    rule: NonEmptyStr
    severity: Severity
    state: AlertState
    previous_state: AlertState
    metric: NonEmptyStr
    value: float | None = None
    threshold: float
    window_start: EpochMs
    window_end: EpochMs
    message: str = ""


class DeadLetterSource(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    topic: str
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    index: Annotated[int, Field(ge=0)] | None = None
    """The event's position in a batch record; None for a record of one event."""


class DeadLetter(_Record):
    """What could not be processed, why, where it came from and its original bytes (base64)."""

    SCHEMA: ClassVar[str] = "deadletter/1"
    schema_: Literal["deadletter/1"] = Field("deadletter/1", alias="schema")
    request_id: str | None = None
    model: str | None = None
    ts: EpochMs
    stage: Literal["mirror", "decode", "validate", "model", "join", "window"]
    reason: NonEmptyStr
    detail: str = ""
    source: DeadLetterSource | None = None
    key_b64: str | None = None
    value_b64: str | None = None


class EventBatch(_Record):
    """Several events in one Kafka record, all of the record's partition (the one murmur2
    gives each event's request id); a record carries one event or one batch."""

    SCHEMA: ClassVar[str] = "batch/1"
    schema_: Literal["batch/1"] = Field("batch/1", alias="schema")
    events: Annotated[list[Annotated[MirroredRequest | ShadowOutput | DivergencePair,
                                     Field(discriminator="schema_")]],
                      Field(min_length=1, max_length=100_000)]


RECORD_TYPES: tuple[type[_Record], ...] = (
    MirroredRequest,
    ShadowOutput,
    DivergencePair,
    WindowSummary,
    Alert,
    DeadLetter,
    EventBatch,
)
