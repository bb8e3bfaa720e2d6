"""Deprecated alias: ``producers.traffic`` moved to ``shadow.sim.traffic``. It keeps the old
path working (in commands, cards and imports) for one release."""

import warnings

from shadow.sim.traffic import *  # noqa: F403

warnings.warn("producers.traffic moved to shadow.sim.traffic"
              "; the old path goes in the next release", DeprecationWarning, stacklevel=2)
