"""What services embed to mirror their requests to Kafka, without ever being affected by it."""

from producers.capture import MirrorASGIMiddleware, MirrorWSGIMiddleware, capture
from producers.config import MirrorConfig
from producers.metrics import MirrorCounts
from producers.mirror import AsyncMirror, Mirror
from producers.pii import PiiPolicy

__all__ = [
    "AsyncMirror",
    "Mirror",
    "MirrorASGIMiddleware",
    "MirrorConfig",
    "MirrorCounts",
    "MirrorWSGIMiddleware",
    "PiiPolicy",
    "capture",
]
