"""The replay pool's latent difficulty: fitted on the matrix's train split, it reproduces the
held-out split's rates and agreement; draws are pure functions of (model, question, seed); on
matrix questions unrecorded models agree with the records, and calibration keeps the correlation.

Tolerances: the matrix's test split has 50 questions per source, so an observed per-model rate
has a standard error of about 0.07 (0.15 is two of them); the mean pairwise phi and the share of
questions some model answers average over 36 pairs and 9 models and are held to 0.08 and 0.06.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from routerops.candidates.latent import LatentOutcomes, fit_loadings, threshold
from routerops.candidates.replay import QualityMatrix, ReplayPool, question_key
from routerops.candidates.types import QuestionInfo


@pytest.fixture(scope="module")
def matrix(shared_data) -> QualityMatrix:
    return QualityMatrix.load(shared_data / "pool")


def mean_phi(x: np.ndarray) -> float:
    r = x.mean(axis=0)
    phis = [((x[:, i] * x[:, j]).mean() - r[i] * r[j]) / np.sqrt(r[i] * (1 - r[i]) * r[j] * (1 - r[j]))
            for i, j in itertools.combinations(range(x.shape[1]), 2) if 0 < r[i] < 1 and 0 < r[j] < 1]
    return float(np.mean(phis))


@pytest.mark.parametrize("source", ["nq", "triviaqa"])
def test_the_fit_reproduces_the_held_out_questions(matrix, source) -> None:
    fit = ReplayPool(matrix).fits[source]
    models, held_out = matrix.outcomes(source, "test")
    assert models == fit.models and held_out.shape == (50, 9)
    observed = held_out.astype(float)
    # 20,000 fresh questions drawn through the pool's own draw functions at the matrix's rates
    lat, units = LatentOutcomes({source: fit}, seed=0), np.random.default_rng(0).random((20_000, 10))
    t = fit.thresholds()
    sim = np.array([[LatentOutcomes.noise(fit.loadings[m], lat.latent(f"q{i}", u[0], None, source), u[m + 1])
                     < t[m] for m in range(9)] for i, u in enumerate(units)], dtype=float)
    assert np.abs(sim.mean(axis=0) - observed.mean(axis=0)).max() < 0.15
    assert mean_phi(sim) == pytest.approx(mean_phi(observed), abs=0.08)
    assert sim.max(axis=1).mean() == pytest.approx(observed.max(axis=1).mean(), abs=0.06)
    # what independence predicts instead: every question answered by someone
    assert 1 - np.prod(1 - observed.mean(axis=0)) > observed.max(axis=1).mean() + 0.3


def test_the_fit_matches_every_pair_it_was_fitted_on(matrix) -> None:
    models, table = matrix.outcomes("nq")
    fit = fit_loadings("nq", models, table)
    assert fit == ReplayPool(matrix).fits["nq"] and fit.questions == 500
    assert all(0.0 <= v <= 0.99 for v in fit.loadings)
    assert fit.loading("a model not in the matrix") == pytest.approx(np.mean(fit.loadings))


@pytest.mark.parametrize(("shape", "error"), [
    ((1, 9), r"^nq: need outcomes of at least 2 questions x 2 models, got shape \(1, 9\)$"),
    ((10, 1), r"^nq: need outcomes of at least 2 questions x 2 models, got shape \(10, 1\)$"),
])
def test_a_fit_needs_data(shape, error) -> None:
    with pytest.raises(ValueError, match=error):
        fit_loadings("nq", [f"m{i}" for i in range(shape[1])], np.zeros(shape, dtype=bool))


def test_outcomes_do_not_depend_on_call_order_or_repetition(matrix, pool) -> None:
    nq = [q for q in matrix.questions.values() if q.data_source == "nq"][:40]
    synthetic = [QuestionInfo(f"s{i}", f"a synthetic question {i}", "hotpotqa", ("g",)) for i in range(40)]
    pairs = [(c, q) for q in [*nq, *synthetic] for c in pool]
    first = [ReplayPool(matrix).correct(c, q) for c, q in pairs]
    rp = ReplayPool(matrix)
    backwards = [rp.correct(c, q) for c, q in reversed(pairs)][::-1]
    again = [rp.correct(c, q) for c, q in pairs]
    assert first == backwards == again


def test_unrecorded_models_agree_with_the_records(matrix, pool) -> None:
    # On the matrix's NQ questions, a model the matrix never scored is right where the recorded
    # models are, not independently of them.
    nq = [q for q in matrix.questions.values() if q.data_source == "nq"]
    right = np.array([sum(s >= 0.5 for s in matrix.scores[question_key(q.text)].values()) for q in nq])
    unrecorded = [c for c in pool if c.replay.matrix_model is None]
    assert len(unrecorded) == 3
    for corr, low, high in ((True, (0.0, 0.05), (0.5, 1.0)), (False, (0.2, 0.45), (0.2, 0.45))):
        rp = ReplayPool(matrix, correlated=corr)
        x = np.array([[rp.correct(c, q)[0] for c in unrecorded] for q in nq], dtype=float)
        assert low[0] <= x[right == 0].mean() <= low[1] and high[0] <= x[right >= 5].mean() <= high[1]


def test_calibration_keeps_the_correlation_of_recorded_models(matrix, pool) -> None:
    nq = [q for q in matrix.questions.values() if q.data_source == "nq"]
    recorded = [c for c in pool if c.replay.matrix_model is not None]
    raw = np.array([[matrix.scores[question_key(q.text)][c.replay.matrix_model] >= 0.5 for c in recorded]
                    for q in nq], dtype=float)
    calibrated = np.array([[ReplayPool(matrix).correct(c, q)[0] for c in recorded] for q in nq], dtype=float)
    independent = np.array([[ReplayPool(matrix, correlated=False).correct(c, q)[0] for c in recorded] for q in nq],
                           dtype=float)
    priors = np.array([c.replay.prior_for("nq") for c in recorded])
    assert np.abs(calibrated.mean(axis=0) - priors).max() < 0.04  # rates are the priors
    # thinning the hardest successes first keeps the records' agreement; coin flips halve it
    assert mean_phi(calibrated) > 0.8 * mean_phi(raw) > mean_phi(independent) + 0.2


def test_a_source_without_matrix_data_takes_each_models_mean_loading(matrix) -> None:
    rp = ReplayPool(matrix)
    nq, tq = rp.fits["nq"], rp.fits["triviaqa"]
    model = "qwen2.5-7b-instruct"
    assert rp.latent.loading(model, "hotpotqa") == pytest.approx((nq.loading(model) + tq.loading(model)) / 2)
    assert rp.latent.loading(None, "nq") == pytest.approx(np.mean(nq.loadings))
    assert ReplayPool(matrix, correlated=False).latent.loading(model, "nq") == 0.0


def test_priors_of_zero_and_one_are_exact(matrix, pool) -> None:
    cand = pool.get("Gemma-2-27B-Instruct")
    qs = [QuestionInfo(f"s{i}", f"synthetic {i}", "nq", ("g",)) for i in range(200)]
    for p, expected in ((0.0, False), (1.0, True)):
        c = cand.model_copy(update={"replay": cand.replay.model_copy(update={"prior_accuracy": {"default": p}})})
        assert {ReplayPool(matrix).correct(c, q)[0] for q in qs} == {expected}
    assert threshold(0.5) == 0.0


def test_the_held_out_slice_is_the_matrix_test_split(matrix) -> None:
    held = matrix.held_out()
    keys = [question_key(q.text) for q in held]
    assert len(held) == 100 and [q.data_source for q in held].count("nq") == 50
    assert all(matrix.splits[k] == "test" for k in keys) and len(set(keys)) == 100
    # the fit never saw them
    _, train_nq = matrix.outcomes("nq")
    assert train_nq.shape[0] + 50 == sum(s == "nq" for s in matrix.sources.values())
