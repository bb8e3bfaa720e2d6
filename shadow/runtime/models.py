"""Loading candidate models without pickle, and the interface between events and tensors.

A candidate is a torch module plus an adapter:

- the module comes from a TorchScript file (``.pt``, ``.ts``, ``.torchscript``), a torch.export
  archive (``.pt2``), or ``package.module:factory`` (a callable returning an ``nn.Module``) with
  optional weights (``torch.load(weights_only=True)`` of a state dict, or ``.safetensors``);
- the adapter turns a batch of events' ``inputs`` into tensors and the module's output back into
  one answer per row. The declared one, ``CardAdapter``, follows a ``ModelCard``: a list of
  features (numbers, lists of numbers, one-hot categories, with log1p and scale) and an output
  kind. Anything else implements the ``Adapter`` protocol (``--adapter package.module:name``).

Where the card comes from: ``--card FILE`` (TOML or JSON); else ``<model file>.card.toml``
beside a model file; else ``MODEL_CARD`` in a factory's module.
"""

from __future__ import annotations

import importlib
import json
import tomllib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from schemas.exceptions import closest
from schemas.records import OutputKind
from shadow.exceptions import ModelLoadError

Transform = Literal["identity", "log1p"]
_TORCHSCRIPT_SUFFIXES = {".pt", ".pth", ".ts", ".torchscript", ".jit"}


class Feature(BaseModel):
    """One input field's contribution to the feature vector."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    field: str = Field(min_length=1)
    """Dotted path into the event's ``inputs``."""
    one_hot: list[str] | None = None
    """Categories: the value becomes one indicator per category (all zero when unknown)."""
    transform: Transform = "identity"
    scale: float = 1.0
    """Multiplies the (transformed) value."""
    size: int | None = Field(None, ge=1)
    """For a list of numbers: its required length (checked per row)."""
    tokens: int | None = Field(None, ge=1, le=65536)
    """For a string: this many character ids in the card's ``vocab`` (id ``i + 1`` is
    ``vocab[i]``; 0 pads, and stands for a character not in it), cut or padded."""

    @property
    def width(self) -> int:
        if self.one_hot is not None:
            return len(self.one_hot)
        return self.tokens or self.size or 1


class JsonField(BaseModel):
    """One field of a JSON answer, from the next values of the model's output row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    """Dotted path in the document (``quote.price``)."""
    labels: list[str] | None = Field(None, min_length=2)
    """A choice: takes one value per label, and is the label of the largest."""
    digits: int | None = Field(None, ge=0, le=15)
    """A number rounded to this many digits (0: an integer)."""

    @property
    def width(self) -> int:
        return len(self.labels) if self.labels else 1


class ModelCard(BaseModel):
    """The declared interface of a candidate: features in, one output kind out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    features: list[Feature] = Field(min_length=1)
    output: OutputKind
    labels: list[str] | None = None
    """Class names (probs) or item ids (scores), carried with each answer."""
    vocab: str | None = Field(None, min_length=1)
    """The characters of ``tokens`` features and of a ``text`` answer (the module answers
    character ids, 0 ending the text)."""
    fields: list[JsonField] | None = Field(None, min_length=1)
    """A ``json`` answer's fields, in the order of the module's output values."""

    @model_validator(mode="after")
    def _complete(self) -> ModelCard:
        if self.vocab is None and (self.output == "text"
                                   or any(f.tokens for f in self.features)):
            raise ValueError("vocab: missing (a text answer or a tokens feature needs the "
                             "characters it is written in)")
        if self.vocab is not None and len(set(self.vocab)) != len(self.vocab):
            raise ValueError("vocab: a character appears twice")
        if self.output == "json" and not self.fields:
            raise ValueError("fields: missing (a json answer is built from them)")
        if self.fields and self.output != "json":
            raise ValueError(f"fields: only for output = \"json\", not {self.output!r}")
        return self

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        try:
            text = path.read_text()
            doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except OSError as exc:
            raise ModelLoadError(path, exc.strerror or str(exc)) from None
        except ValueError as exc:  # TOML or JSON syntax
            raise ModelLoadError(path, f"not a model card: {exc}") from None
        return cls.parse(doc, path)

    @classmethod
    def parse(cls, doc: Any, source: str | Path) -> ModelCard:
        """Validate a card; a mistake is one line naming the key (and the closest valid one)."""
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            raise ModelLoadError(source, f"invalid model card: {_card_error(exc)}") from None


def _card_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    # A misspelt key also leaves the right one missing: the misspelling says more.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(p) for p in err["loc"]]
    where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")
    if not loc:  # the card as a whole (a key that needs another)
        return str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        parent, key = where.rpartition(".")[0], loc[-1]
        known = (Feature.model_fields if "features" in loc[:-1] else
                 JsonField.model_fields if "fields" in loc[:-1] else ModelCard.model_fields)
        hint = closest(key, known)
        tip = f" (did you mean {hint!r}?)" if hint else f" (known: {', '.join(known)})"
        return f"unknown key {key!r}{f' in {parent}' if parent else ''}{tip}"
    if err["type"] == "missing":
        return f"{where}: missing"
    return f"{where}: {err['msg']}"


@runtime_checkable
class Adapter(Protocol):
    """Turns events' inputs into the module's arguments, and its result into answers.

    ``collate`` runs on the host and returns CPU tensors (the engine moves them to the device).
    ``answers`` gets the module's output on the CPU as float32 and returns one output document
    per row: ``{"kind": ..., "value": ...}`` (plus ``labels``/``items`` where they apply).
    Either may raise: the engine then narrows the batch down to the rows that fail.
    """

    def collate(self, inputs: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, ...]: ...

    def answers(self, result: torch.Tensor) -> list[dict[str, Any]]: ...


def _lookup(inputs: Mapping[str, Any], path: str) -> Any:
    value: Any = inputs
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"inputs.{path} is missing")
        value = value[part]
    return value


class CardAdapter:
    """The adapter a ModelCard declares."""

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        self.width = sum(f.width for f in card.features)
        self._ids = {ch: i + 1 for i, ch in enumerate(card.vocab or "")}

    def featurize(self, inputs: Mapping[str, Any]) -> list[float]:
        """One row's features, in float64 (for checking a card against other code)."""
        return self._matrix([inputs], np.float64)[0].tolist()

    def collate(self, inputs: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, ...]:
        return (torch.from_numpy(self._matrix(inputs, np.float32)),)

    def _matrix(self, inputs: Sequence[Mapping[str, Any]], dtype: type) -> np.ndarray:
        """Column by column with numpy: a Python loop per row costs more than the model.

        Any row that does not fit (missing field, wrong type or length) makes the whole
        batch raise, naming the field; the engine then narrows down to that row.
        """
        n = len(inputs)
        out = np.empty((n, self.width), dtype=dtype)
        col = 0
        for f in self.card.features:
            if "." in f.field:
                values = [_lookup(x, f.field) for x in inputs]
            else:
                try:
                    values = [x[f.field] for x in inputs]
                except KeyError:
                    raise KeyError(f"inputs.{f.field} is missing") from None
            if f.one_hot is not None:
                for c in f.one_hot:
                    out[:, col] = [v == c for v in values]
                    col += 1
                continue
            if f.tokens is not None:
                out[:, col:col + f.tokens] = self._encode(f, values)
                col += f.tokens
                continue
            try:
                if any(type(v) is bool or type(v) is str for v in values):
                    raise TypeError
                arr = np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError):  # strings, ragged lists, None
                raise TypeError(f"inputs.{f.field} is not numeric (or ragged)") from None
            arr = arr.reshape(n, -1)
            if arr.shape[1] != f.width:
                raise ValueError(f"inputs.{f.field} has {arr.shape[1]} values, "
                                 f"expected {f.width}")
            if f.transform == "log1p":
                arr = np.log1p(arr)
            out[:, col:col + f.width] = arr * f.scale
            col += f.width
        return out

    def _encode(self, f: Feature, values: Sequence[Any]) -> np.ndarray:
        assert f.tokens is not None
        ids = np.zeros((len(values), f.tokens), dtype=np.float64)
        get = self._ids.get
        for row, text in enumerate(values):
            if type(text) is not str:
                raise TypeError(f"inputs.{f.field} is not a string")
            ids[row, :min(len(text), f.tokens)] = [get(ch, 0) for ch in text[:f.tokens]]
        return ids

    def answers(self, result: torch.Tensor) -> list[dict[str, Any]]:
        kind = self.card.output
        if kind == "text":
            return [{"kind": "text", "value": self._text(row)}
                    for row in result.reshape(result.shape[0], -1).tolist()]
        if kind == "json":
            return [{"kind": "json", "value": self._document(row)}
                    for row in result.reshape(result.shape[0], -1).tolist()]
        if kind == "scalar":
            values: list[Any] = result.reshape(result.shape[0], -1)[:, 0].tolist()
        else:
            values = result.reshape(result.shape[0], -1).tolist()
        if self.card.labels is None:
            return [{"kind": kind, "value": v} for v in values]
        name, labels = "labels" if kind == "probs" else "items", self.card.labels
        return [{"kind": kind, "value": v, name: labels} for v in values]


    def _text(self, ids: list[float]) -> str:
        vocab, chars = self.card.vocab or "", []
        for x in ids:
            i = round(x)
            if i <= 0 or i > len(vocab):  # 0 ends the text; an id out of range too
                break
            chars.append(vocab[i - 1])
        return "".join(chars)

    def _document(self, values: list[float]) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        at = 0
        for f in self.card.fields or ():
            if f.labels:
                part = values[at:at + len(f.labels)]
                value: Any = f.labels[part.index(max(part))]  # the first of equal maxima
            elif f.digits == 0:
                value = round(values[at])
            else:
                value = values[at] if f.digits is None else round(values[at], f.digits)
            at += f.width
            node = doc
            *parents, last = f.name.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
        return doc


@dataclass
class Candidate:
    """A loaded candidate: its module (in eval mode, on the CPU in fp32) and its adapter."""

    source: str
    module: nn.Module | torch.jit.ScriptModule
    adapter: Adapter


def _import(spec: str, what: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelLoadError(spec, f"{what} must look like package.module:name")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(spec, f"cannot import {what}: {exc}") from None


def _load_weights(module: nn.Module, path: Path) -> None:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise ModelLoadError(path, f"expected a state dict, found {type(state).__name__}")
        module.load_state_dict(state)
    except ModelLoadError:
        raise
    except Exception as exc:  # pickle refusals, shape mismatches, truncated files
        raise ModelLoadError(path, f"cannot load weights: {exc}") from None


def _load_module(spec: str, weights: Path | None) -> tuple[Any, Any]:
    """(module, the factory's Python module or None)."""
    path = Path(spec)
    if path.suffix == ".pt2":
        if not path.is_file():
            raise ModelLoadError(path, "no such file")
        try:
            return torch.export.load(str(path)).module(), None
        except Exception as exc:
            raise ModelLoadError(path, f"not a torch.export archive: {exc}") from None
    if path.suffix in _TORCHSCRIPT_SUFFIXES or path.exists():
        if not path.is_file():
            raise ModelLoadError(path, "no such file")
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, still what many ship
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(
                path, f"not a TorchScript archive ({exc}); a state dict needs a factory: "
                "--candidate package.module:factory --weights FILE") from None
        if weights is not None:
            _load_weights(module, weights)
        return module, None
    factory = _import(spec, "the factory")
    try:
        module = factory()
    except Exception as exc:
        raise ModelLoadError(spec, f"the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ModelLoadError(spec, f"the factory returned {type(module).__name__}, "
                                   "not a torch.nn.Module")
    if weights is not None:
        _load_weights(module, weights)
    return module, importlib.import_module(spec.partition(":")[0])


def load_candidate(spec: str, *, weights: Path | None = None, card: Path | None = None,
                   adapter: str | None = None) -> Candidate:
    """Load a candidate model and its adapter; raises ModelLoadError naming what and why."""
    module, factory_module = _load_module(spec, weights)
    if not isinstance(module, torch.fx.GraphModule):  # torch.export's modules refuse eval()
        module.eval()
    if adapter is not None:
        found = _import(adapter, "the adapter")
        chosen = found() if isinstance(found, type) else found
        if not isinstance(chosen, Adapter):
            raise ModelLoadError(adapter, "needs collate() and answers() "
                                          "(shadow.runtime.models.Adapter)")
        return Candidate(spec, module, chosen)
    sidecar = Path(f"{spec}.card.toml")
    if card is not None:
        model_card, card_source = ModelCard.load(card), str(card)
    elif sidecar.is_file():
        model_card, card_source = ModelCard.load(sidecar), str(sidecar)
    elif factory_module is not None and hasattr(factory_module, "MODEL_CARD"):
        card_source = f"{spec.partition(':')[0]}.MODEL_CARD"
        model_card = ModelCard.parse(factory_module.MODEL_CARD, card_source)
    else:
        raise ModelLoadError(spec, f"no model card: pass --card FILE, put one at {sidecar}, "
                                   "or define MODEL_CARD beside the factory")
    candidate = Candidate(spec, module, CardAdapter(model_card))
    check_card(candidate, model_card, card_source)
    return candidate


def _example_inputs(card: ModelCard) -> dict[str, Any]:
    """One request's inputs as the card describes them (zeros, the first category)."""
    inputs: dict[str, Any] = {}
    for f in card.features:
        value: Any = (f.one_hot[0] if f.one_hot else (card.vocab or "a")[0] if f.tokens
                      else [0.0] * f.size if f.size else 0.0)
        node = inputs
        *parents, last = f.field.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return inputs


def check_card(candidate: Candidate, card: ModelCard, card_source: str = "its card") -> None:
    """Refuse at load a card that does not fit its model: the worker would otherwise answer
    every request with the same error, or with answers of the wrong kind or labels."""
    adapter = candidate.adapter
    assert isinstance(adapter, CardAdapter)
    where = f"{candidate.source} with {card_source}"
    fields = ", ".join(f.field for f in card.features)
    try:
        with torch.inference_mode():
            result = candidate.module(*adapter.collate([_example_inputs(card)]))
    except Exception as exc:
        raise ModelLoadError(where, f"the card's {adapter.width} features ({fields}) do not "
                                    f"fit the model: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0]}") from None
    if not isinstance(result, torch.Tensor):
        raise ModelLoadError(where, f"the model returns {type(result).__name__}, not a tensor: "
                                    "give it an --adapter")
    per_row = result.reshape(result.shape[0], -1).shape[1] if result.dim() else 1
    fields_width = sum(f.width for f in card.fields or ())
    if card.output == "json" and per_row != fields_width:
        raise ModelLoadError(where, f"the card's fields take {fields_width} values per "
                                    f"request, the model answers {per_row}")
    if card.output == "scalar" and per_row != 1:
        raise ModelLoadError(where, f"the card says output = \"scalar\", the model answers "
                                    f"{per_row} values per request")
    if card.labels is not None and len(card.labels) != per_row:
        raise ModelLoadError(where, f"the card names {len(card.labels)} labels, the model "
                                    f"answers {per_row} values per request")
