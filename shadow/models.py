"""Deprecated alias: ``shadow.models`` moved to ``shadow.runtime.models``. It keeps the old
path working (in commands, cards and imports) for one release."""

import warnings

from shadow.runtime.models import *  # noqa: F403

warnings.warn("shadow.models moved to shadow.runtime.models"
              "; the old path goes in the next release", DeprecationWarning, stacklevel=2)
