"""Deprecated alias: ``shadow.engine`` moved to ``shadow.runtime.engine``. It keeps the old
path working (in commands, cards and imports) for one release."""

import warnings

from shadow.runtime.engine import *  # noqa: F403

warnings.warn("shadow.engine moved to shadow.runtime.engine"
              "; the old path goes in the next release", DeprecationWarning, stacklevel=2)
