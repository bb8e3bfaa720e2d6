"""How one shadow worker runs one candidate: its settings object, light to import (the
CLI takes its option defaults from here without loading torch or Kafka)."""

from __future__ import annotations

import atexit
import gc
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from shadow.settings import Settings

__all__ = ["WorkerConfig", "tune_collector"]


def tune_collector(middle: int = 20) -> None:
    """Collect the young generation less often, and never again scan what exists now (the
    model, torch, the libraries). Decoding a batch makes thousands of dicts that live until
    it is answered: with the default thresholds the cyclic collector ran over and over and
    tripled decoding's cost (11.6 against 3.6 us a request, measured in process). What is
    made per request is freed by reference counting; cycles are still collected.

    ``middle``: young collections between two of the middle generation. Replay keeps a
    minute of traffic's entries alive per window, which each of those scans again: it
    passes 1,000 (6 % faster, the same peak memory, measured)."""
    gc.set_threshold(50_000, middle, 100)
    gc.freeze()
    # Frozen objects are never collected, not even at exit, where extension modules that
    # count their instances (triton's, loaded by torch.compile) would report them leaked.
    atexit.unregister(gc.unfreeze)  # once, however many workers a process runs
    atexit.register(gc.unfreeze)


class WorkerConfig(BaseModel):
    """How one worker runs one candidate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidate_id: str = Field(min_length=1, max_length=256)
    """The name the candidate's answers carry; also names its consumer group."""
    max_batch: int = Field(64, ge=1, le=65536)
    max_wait_ms: float = Field(10.0, ge=0)
    """A batch goes to the model when it is full or when this long has passed."""
    group: str | None = None
    """Consumer group; default ``<prefix>.shadow.<candidate_id>``, one per candidate."""
    models: tuple[str, ...] = ()
    """The models this candidate shadows; requests of any other model are dead-lettered as
    unknown. Empty: every request on the topic."""
    commit_interval_s: float = Field(1.0, gt=0)
    session_timeout_ms: int = Field(10_000, ge=1000)
    """How soon the group notices a dead worker and hands its partitions to the others."""
    control: bool = False
    """This candidate is a control: a second copy of the live model, whose divergence from
    live is the noise floor the model's other candidates are judged against."""
    flush_timeout_s: float = Field(60.0, gt=0)
    metrics_port: int | None = None

    def group_id(self, settings: Settings) -> str:
        return self.group or f"{settings.topic_prefix}.shadow.{self.candidate_id}"
