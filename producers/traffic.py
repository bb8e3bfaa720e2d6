"""Deprecated alias: ``producers.traffic`` moved to ``shadow.sim.traffic``. It keeps the old
path working (in commands, cards and imports) for one release."""

import warnings

from shadow.sim.traffic import *  # noqa: F403

# FutureWarning, not DeprecationWarning: Python shows it by default, and whoever typed the
# old path (in a command or a card) is the one running it.
warnings.warn("producers.traffic moved to shadow.sim.traffic"
              "; the old path goes in the next release", FutureWarning, stacklevel=2)
