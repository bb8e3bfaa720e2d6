"""Small candidate models for the worker's tests, loadable as ``tests.models_for_tests:NAME``."""

from __future__ import annotations

import torch
from torch import nn

from shadow.sim.traffic import MODEL_CARD as FRAUD_CARD
from shadow.sim.traffic import build_model

MODEL_CARD = FRAUD_CARD


def fraud_seed1() -> nn.Module:
    """Another candidate: same shape, other weights."""
    return build_model(1)


class _Picky(nn.Module):
    """Raises on any batch that holds a row with amount feature above a threshold, and
    answers NaN for rows whose hour feature is exactly zero."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = build_model(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] > 1.9).any()):  # log1p(amount) * 0.2 > 1.9: amount > ~13,000
            raise ValueError("amount out of range")
        out = self.inner(x)
        return torch.where((x[:, 1] == 0).unsqueeze(1), torch.full_like(out, float("nan")), out)


def picky() -> nn.Module:
    return _Picky()


class _OomAbove(nn.Module):
    """Pretends to run out of CUDA memory on batches larger than 4 rows."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = build_model(0)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        if x.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def oom_above_4() -> nn.Module:
    return _OomAbove()


def not_a_module() -> object:
    return "a string"


class _Broken(nn.Module):
    """Fails on every real request (any amount above zero), as a candidate with a bug would;
    the all-zero example of its card goes through, so it loads."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = build_model(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] > 0).any()):
            raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({x.shape[0]}x8 "
                               "and 9x2)")
        return self.inner(x)


def broken() -> nn.Module:
    return _Broken()


class _Slow(nn.Module):
    """The live model, 20 ms slower per batch (a candidate that answers alike, late)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = build_model(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.02)
        return self.inner(x)


def slow() -> nn.Module:
    return _Slow()
