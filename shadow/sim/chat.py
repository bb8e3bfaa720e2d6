"""A tiny generative model for trying text answers: it rewrites a customer's message,
character by character, sampled with a temperature.

Each answer character is drawn from ``softmax((W[prompt char] + B[previous answer char]) /
temperature)`` by the Gumbel-max trick, so two copies of the very same weights answer
differently by sampling alone (what a control measures). The draw of a row is seeded by the
copy's own seed and the prompt, so that one copy answers a prompt the same way every time
(replays give the same report). ``build_chat`` is the live model; ``build_chat_control``
the same weights with another seed; ``build_chat_retrained`` other weights, which swap a few
vowels: its answers look alike and differ in most words.

Loadable by the worker and replay as ``shadow.sim.chat:build_chat`` (and the others), with
``MODEL_CARD`` below.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["MODEL_CARD", "TOLERANCES", "VOCAB", "ChatModel", "build_chat",
           "build_chat_control", "build_chat_retrained", "prompts"]

VOCAB = "abcdefghijklmnopqrstuvwxyz0123456789 .,?'"
MAX_CHARS = 48
TEMPERATURE = 1.0
SHARPNESS = 9.0
"""The logit of the intended character over the others: at temperature 1, one character in
two hundred is another (40 e^-9 / (1 + 40 e^-9)), so two samples of a 30-character answer
differ about three times in ten."""

MODEL_CARD = {
    "features": [{"field": "message", "tokens": MAX_CHARS}],
    "output": "text",
    "vocab": VOCAB,
}

TOLERANCES = """\
[models.support-chat]
min_token_f1 = 0.9   # disagree when a word in ten differs
"""
"""The tolerance the demo and the tests judge this model's answers with."""

_TEMPLATES = ("where is my parcel {n}?", "when does order {n} ship?",
              "can i change the address of order {n}?", "refund for order {n}, a broken {item}",
              "how long does delivery of {n} to {city} take?", "my {item} arrived late, order {n}",
              "i would like to cancel order {n}", "can order {n} go to {city}?")
# Every message names an order: a copy samples a message the same way every time (replays
# repeat), so repeated messages would make its samples far from independent.
_ITEMS = ("phone", "lamp", "kettle", "chair", "bike")
_CITIES = ("paris", "lyon", "berlin", "madrid", "rome")


class ChatModel(nn.Module):
    """Prompt character ids (batch, n) to answer character ids (batch, n), 0 ending both."""

    def __init__(self, mapping: dict[str, str] | None = None, seed: int = 0,
                 temperature: float = TEMPERATURE) -> None:
        super().__init__()
        v = len(VOCAB) + 1  # id 0 pads
        emit = torch.zeros(v, v)
        for i, ch in enumerate(VOCAB, start=1):
            emit[i, VOCAB.index((mapping or {}).get(ch, ch)) + 1] = SHARPNESS
        emit[0, 0] = SHARPNESS  # padding answers the end
        self.emit = nn.Parameter(emit, requires_grad=False)
        # What the previous answer character adds (a bigram term): zero in these weights,
        # there so that the model is autoregressive as a real one is.
        self.follow = nn.Parameter(torch.zeros(v, v), requires_grad=False)
        self.seed = seed
        self.temperature = temperature

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        prompt = ids.round().long()
        batch, n = prompt.shape
        v = self.emit.shape[0]
        noise = torch.stack([self._gumbel(row, n, v) for row in prompt]) if batch else \
            torch.zeros(0, n, v)
        out = torch.zeros(batch, n, dtype=torch.long)
        prev = torch.zeros(batch, dtype=torch.long)
        for t in range(n):
            logits = (self.emit[prompt[:, t]] + self.follow[prev]) / self.temperature
            prev = (logits + noise[:, t]).argmax(-1)
            prev = torch.where(prompt[:, t] == 0, 0, prev)  # the answer ends with the prompt
            out[:, t] = prev
        return out.float()

    def _gumbel(self, row: torch.Tensor, n: int, v: int) -> torch.Tensor:
        # A hash, not a mix of the two: generators seeded alike draw alike at first.
        digest = hashlib.blake2b(row.numpy().tobytes(), digest_size=8,
                                 salt=self.seed.to_bytes(8, "little")).digest()
        seed = int.from_bytes(digest, "little") >> 1
        u = torch.rand(n, v, generator=torch.Generator().manual_seed(seed))
        return -torch.log(-torch.log(u.clamp(1e-9, 1 - 1e-9)))


def build_chat() -> ChatModel:
    """The live model."""
    return ChatModel(seed=0).eval()


def build_chat_control() -> ChatModel:
    """A second copy of the live model (the same weights, its own samples): the control."""
    return ChatModel(seed=1).eval()


def build_chat_same() -> ChatModel:
    """A candidate with the live model's weights: it should be promoted, although its text
    differs from the live text on many requests."""
    return ChatModel(seed=2).eval()


def build_chat_retrained() -> ChatModel:
    """A candidate with other weights: a few vowels swapped, most words differ."""
    return ChatModel({"a": "e", "e": "a", "o": "u", "u": "o"}, seed=3).eval()


@dataclass(frozen=True)
class Prompt:
    request_id: str
    message: str
    segment: str


def prompts(seed: int = 0, model: str = "support-chat") -> Iterator[Prompt]:
    """Customers' messages, endless: a pure function of the seed and the index."""
    i = 0
    while True:
        rng = np.random.default_rng([seed, i])
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        message = template.format(n=int(rng.integers(1000, 99999)),
                                  item=_ITEMS[int(rng.integers(len(_ITEMS)))],
                                  city=_CITIES[int(rng.integers(len(_CITIES)))])
        yield Prompt(f"{model}-{seed}-{i:09d}", message[:MAX_CHARS],
                     "mobile" if rng.random() < 0.4 else "web")
        i += 1
