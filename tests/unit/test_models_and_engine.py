"""Model loading (no pickle) and the inference engine, on the CPU, without Kafka."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from shadow.exceptions import ModelLoadError
from shadow.runtime.engine import DeviceError, InferenceEngine, resolve_device
from shadow.runtime.models import CardAdapter, ModelCard, load_candidate
from shadow.sim.traffic import MODEL_CARD, TrafficSpec, build_model, featurize

ROWS = [TrafficSpec(seed=3).event(i).inputs for i in range(40)]


def _own_answers(model: torch.nn.Module, rows: list[dict]) -> list[list[float]]:
    with torch.inference_mode():
        return model(torch.tensor([featurize(r) for r in rows])).tolist()


def _close(a: list[float], b: list[float], tol: float = 1e-6) -> bool:
    return all(math.isclose(x, y, abs_tol=tol) for x, y in zip(a, b, strict=True))


def test_the_card_builds_the_traffic_models_own_features() -> None:
    adapter = CardAdapter(ModelCard.model_validate(MODEL_CARD))
    for row in ROWS:
        assert _close(adapter.featurize(row), featurize(row), 1e-12)


def test_card_errors_name_the_field() -> None:
    adapter = CardAdapter(ModelCard.model_validate(MODEL_CARD))
    with pytest.raises(KeyError, match=r"inputs\.amount"):
        adapter.featurize({"hour": 1, "country": "DE", "history": [0, 0, 0]})
    with pytest.raises(ValueError, match=r"inputs\.history has 2 values"):
        adapter.featurize({**ROWS[0], "history": [0.1, 0.2]})
    with pytest.raises(TypeError, match=r"inputs\.hour is not numeric"):
        adapter.featurize({**ROWS[0], "hour": "noon"})


def test_factory_torchscript_and_export_load_to_the_same_answers(tmp_path: Path) -> None:
    model = build_model(0)
    expected = _own_answers(model, ROWS)
    card = tmp_path / "card.toml"
    card.write_text('output = "probs"\nlabels = ["legit", "fraud"]\n'
                    '[[features]]\nfield = "amount"\ntransform = "log1p"\nscale = 0.2\n'
                    '[[features]]\nfield = "hour"\nscale = 0.043478260869565216\n'
                    '[[features]]\nfield = "country"\none_hot = ["DE", "FR", "US"]\n'
                    '[[features]]\nfield = "history"\nsize = 3\n')
    scripted = tmp_path / "fraud.pt"
    torch.jit.save(torch.jit.script(model), scripted)
    exported = tmp_path / "fraud.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(2, 8),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},)),
                      exported)
    candidates = [
        load_candidate("shadow.sim.traffic:build_model"),
        load_candidate(str(scripted), card=card),
        load_candidate(str(exported), card=card),
    ]
    for cand in candidates:
        answers = InferenceEngine(cand, device="cpu", max_batch=16).infer(ROWS)
        assert len(answers) == len(ROWS)
        for a, e in zip(answers, expected, strict=True):
            assert a.error is None and a.output is not None
            assert a.output["kind"] == "probs" and _close(a.output["value"], e, 1e-5)
    assert answers[0].output is not None and answers[0].output["labels"] == ["legit", "fraud"]


@pytest.mark.parametrize("fmt", [".pt", ".safetensors"])
def test_factory_with_weights_without_pickle(tmp_path: Path, fmt: str) -> None:
    other = build_model(7)
    weights = tmp_path / f"w{fmt}"
    if fmt == ".pt":
        torch.save(other.state_dict(), weights)
    else:
        from safetensors.torch import save_file

        save_file(other.state_dict(), str(weights))
    cand = load_candidate("shadow.sim.traffic:build_model", weights=weights)
    answers = InferenceEngine(cand, device="cpu").infer(ROWS[:5])
    for a, e in zip(answers, _own_answers(other, ROWS[:5]), strict=True):
        assert a.output is not None and _close(a.output["value"], e, 1e-5)


def test_a_pickled_object_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"net.0.weight": object()}, evil)  # needs pickle to load: weights_only refuses
    with pytest.raises(ModelLoadError, match=r"evil\.pt: cannot load weights"):
        load_candidate("shadow.sim.traffic:build_model", weights=evil)


@pytest.mark.parametrize(("spec", "match"), [
    ("missing.pt", "missing.pt: no such file"),
    ("nowhere.module:factory", "cannot import the factory"),
    ("shadow.sim.traffic:nope", "cannot import the factory"),
    ("tests.models_for_tests:not_a_module", "returned str, not a torch.nn.Module"),
    ("torch", "must look like package.module:name"),
])
def test_load_errors_name_the_source_and_the_reason(spec: str, match: str) -> None:
    with pytest.raises(ModelLoadError, match=match):
        load_candidate(spec)


def test_a_state_dict_given_as_a_model_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(build_model(0).state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"not a TorchScript archive.*--weights"):
        load_candidate(str(path))


def test_a_failing_batch_is_narrowed_to_its_bad_rows() -> None:
    rows = [dict(r) for r in ROWS[:16]]
    rows[3] = {**rows[3], "amount": 50_000.0}  # the model raises on it
    rows[9] = {**rows[9], "hour": 0}  # the model answers NaN for it
    rows[12] = {**rows[12], "country": 7, "history": "x"}  # collate fails on it
    errors: list[tuple[str, int]] = []

    class Obs:
        def batch(self, size: int, seconds: float) -> None:
            pass

        def error(self, kind: str, rows: int) -> None:
            errors.append((kind, rows))

    cand = load_candidate("tests.models_for_tests:picky")
    answers = InferenceEngine(cand, device="cpu", observer=Obs()).infer(rows)
    assert [i for i, a in enumerate(answers) if a.error] == [3, 9, 12]
    assert "amount out of range" in (answers[3].error or "")
    assert "non-finite" in (answers[9].error or "")
    assert "inputs.history" in (answers[12].error or "")
    good = [i for i in range(16) if i not in (3, 9, 12)]
    expected = _own_answers(build_model(0), [rows[i] for i in good])
    for i, e in zip(good, expected, strict=True):
        assert answers[i].output is not None and _close(answers[i].output["value"], e)
    assert ("model", 1) in errors and ("non_finite", 1) in errors and ("input", 1) in errors
    # The worker dead-letters inputs that do not fit the card, and only those.
    assert [answers[i].error_kind for i in (3, 9, 12)] == ["model", "non_finite", "input"]
    assert all(answers[i].error_kind is None for i in good)


def test_out_of_memory_halves_the_batch_for_good() -> None:
    cand = load_candidate("tests.models_for_tests:oom_above_4")
    engine = InferenceEngine(cand, device="cpu", max_batch=32)
    answers = engine.infer(ROWS[:20])
    assert all(a.error is None for a in answers)
    assert engine.max_batch <= 4
    seen = cand.module.seen  # type: ignore[union-attr]
    seen.clear()
    assert all(a.error is None for a in engine.infer(ROWS[:20]))
    assert seen and max(seen) <= 4  # later batches go straight in at the smaller size


def test_a_prepared_batch_larger_than_max_batch_runs_in_slices_collated_once() -> None:
    # A worker's consumed records carry many events: its batch exceeds max_batch. The
    # collated tensors run a slice at a time; a failing row is still narrowed to itself.
    rows = [dict(r) for r in ROWS[:40]]
    rows[21] = {**rows[21], "amount": 50_000.0}  # the model raises on it
    cand = load_candidate("tests.models_for_tests:picky")
    collated: list[int] = []
    collate = cand.adapter.collate

    def counting(inputs: Any) -> Any:
        collated.append(len(inputs))
        return collate(inputs)

    cand.adapter.collate = counting  # type: ignore[method-assign]
    engine = InferenceEngine(cand, device="cpu", max_batch=8)
    answers = engine.run(engine.prepare(rows))
    assert collated[0] == 40 and all(n <= 4 for n in collated[1:])  # only the narrowing
    assert "amount out of range" in (answers[21].error or "")
    again = engine.infer(rows)  # chunk by chunk, collated per chunk: the same answers
    assert [(a.output, a.error, a.error_kind) for a in answers] == [
        (a.output, a.error, a.error_kind) for a in again]
    assert sum(a.error is None for a in answers) >= 35


def test_map_overlaps_and_keeps_order_and_bf16_runs_on_cpu() -> None:
    cand = load_candidate("shadow.sim.traffic:build_model")
    engine = InferenceEngine(cand, device="cpu", dtype="bf16", max_batch=8)
    batches = [ROWS[i:i + 8] for i in range(0, 40, 8)]
    results = list(engine.map(batches))
    assert [len(r) for r in results] == [8] * 5
    expected = _own_answers(build_model(0), ROWS)
    flat = [a for r in results for a in r]
    for a, e in zip(flat, expected, strict=True):
        assert a.output is not None and _close(a.output["value"], e, 0.05)  # bf16: ~3 digits


def test_devices_are_checked() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda"}
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda:0")
    with pytest.raises(DeviceError):
        resolve_device("tpu")


_FRAUD_FEATURES = ('[[features]]\nfield = "amount"\ntransform = "log1p"\nscale = 0.2\n'
                   '[[features]]\nfield = "hour"\nscale = 0.0434783\n'
                   '[[features]]\nfield = "country"\none_hot = ["DE", "FR", "US"]\n'
                   '[[features]]\nfield = "history"\nsize = 3\n')


@pytest.mark.parametrize("card,message", [
    # Two features for an eight-feature model: every request would have been an error.
    ('output = "probs"\n[[features]]\nfield = "amount"\n[[features]]\nfield = "hour"\n',
     r"build_model with .*card.toml: the card's 2 features \(amount, hour\) do not fit the "
     r"model: RuntimeError: "),
    ('output = "scalar"\n' + _FRAUD_FEATURES,
     r'the card says output = "scalar", the model answers 2 values per request'),
    ('output = "probs"\nlabels = ["legit", "fraud", "other"]\n' + _FRAUD_FEATURES,
     r"the card names 3 labels, the model answers 2 values per request"),
    ('output = "probs"\n' + _FRAUD_FEATURES.replace("scale = 0.2", "scael = 0.2"),
     r"invalid model card: unknown key 'scael' in features\[0\] \(did you mean 'scale'\?\)$"),
    ('output = "probs"\n[[features]]\nfield = \n', r"not a model card: "),
])
def test_a_card_that_does_not_fit_its_model_is_refused_at_load(tmp_path: Path, card: str,
                                                               message: str) -> None:
    path = tmp_path / "card.toml"
    path.write_text(card)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_candidate("shadow.sim.traffic:build_model", card=path)
    assert "\n" not in str(info.value)
    path.write_text('output = "probs"\nlabels = ["legit", "fraud"]\n' + _FRAUD_FEATURES)
    assert load_candidate("shadow.sim.traffic:build_model", card=path) is not None
