"""Deprecated alias: ``shadow.models`` moved to ``shadow.runtime.models``. It keeps the old
path working (in commands, cards and imports) for one release."""

import warnings

from shadow.runtime.models import *  # noqa: F403

# FutureWarning, not DeprecationWarning: Python shows it by default, and whoever typed the
# old path (in a command or a card) is the one running it.
warnings.warn("shadow.models moved to shadow.runtime.models"
              "; the old path goes in the next release", FutureWarning, stacklevel=2)
