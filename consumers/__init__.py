"""The statistics core: the join of live and shadow answers, comparison, windows, drift,
alert rules and the verdict. Pure code: no Kafka, Faust or Redis here (only in
``consumers.faust``, the app that drives the core), so replay and the live path share it.

``tests/unit/test_layers.py`` holds this promise.
"""

from consumers.alerting import AlertMachine
from consumers.compare import Tolerances, compare
from consumers.join import JoinConfig, JoinCore
from consumers.rules import RuleSet
from consumers.verdict import judge

__all__ = ["AlertMachine", "JoinConfig", "JoinCore", "RuleSet", "Tolerances", "compare",
           "judge"]
