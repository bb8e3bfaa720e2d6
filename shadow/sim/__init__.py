"""Simulation: a synthetic service with a real torch model (``traffic``, ``shadow traffic``)
and the whole pipeline on this machine (``pipeline``, ``shadow demo``)."""
