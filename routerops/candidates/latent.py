"""Correlated correctness for the replay pool: one latent difficulty per question, shared by every
candidate, fitted on the quality matrix.

Real models are not independent: on the matrix's NQ questions the mean pairwise phi between the
nine models' correctness is 0.54 (TriviaQA 0.74), and 69 % of NQ questions are answered by at
least one model where independence at the same rates predicts 99 %. Drawn independently, the
replay pool made the oracle and a second call after a wrong answer look far better than they are
against real endpoints.

The model (a one-factor Gaussian copula). A question has a latent difficulty z ~ N(0, 1), drawn
deterministically from the question and the seed. Candidate m on a question of source s has
y = l * z + sqrt(1 - l^2) * e, with e ~ N(0, 1) its own noise (deterministic from model, question
and seed), and is correct when y < Phi^-1(p), p its prior for s. So each candidate's rate is its
prior, and two candidates agree through z: the larger their loadings l, the more. The loadings
are fitted per source on the matrix's train split so that the model's probability that two
models are both right matches the matrix's, pair by pair, at the matrix's own rates (least
squares over the 36 pairs). A candidate that is not in the matrix takes the mean loading of the
source; a source without matrix data takes, per model, the mean of its loadings over the matrix's
sources (`default_loading`).

On a matrix question the records speak: z is drawn from its posterior given the nine recorded
outcomes (at the matrix's rates), so a model without records agrees with the recorded ones as a
real model would. A recorded model keeps its record, or with calibration (the records are
F1-style, about twice as lenient as the exact-match priors) its y is drawn given z and its record
and compared with its prior's threshold: the hardest of its recorded successes are the ones
calibration takes away, so the correlation survives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = ["FactorFit", "LatentOutcomes", "fit_loadings", "joint_correct"]

_N = NormalDist()
_MAX_LOADING = 0.99  # keeps some noise of every model's own (sqrt(1 - l^2) >= 0.14)
_RATE_CLIP = 1e-3
# Gauss-Hermite (probabilists') nodes: E[f(z)] = sum(w * f(x)) / sqrt(2 pi) for z ~ N(0, 1).
_NODES, _W = np.polynomial.hermite_e.hermegauss(64)
_W = _W / math.sqrt(2 * math.pi)
# The posterior of z on a grid (its tails beyond 6 sd carry nothing a draw could reach).
_GRID = np.linspace(-6.0, 6.0, 1201)
_erf = np.vectorize(math.erf, otypes=[float])


def _cdf(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + _erf(np.asarray(x, dtype=float) / math.sqrt(2.0))))


def _inv(u: float) -> float:
    return _N.inv_cdf(min(max(u, 1e-12), 1.0 - 1e-12))


def threshold(rate: float) -> float:
    """The latent threshold of a success rate: y < t with probability `rate`."""
    return _inv(min(max(rate, _RATE_CLIP), 1.0 - _RATE_CLIP))


def _correct_given_z(t: np.ndarray, loading: np.ndarray, z: np.ndarray) -> np.ndarray:
    """P(correct | z) per model (rows) and z value (columns)."""
    s = np.sqrt(1.0 - loading**2)
    return _cdf((t[:, None] - loading[:, None] * z[None, :]) / s[:, None])


def joint_correct(t: np.ndarray, loading: np.ndarray) -> np.ndarray:
    """The model's P(both right) for every pair of models (the diagonal is each model's rate)."""
    a = _correct_given_z(t, loading, _NODES)
    return np.asarray((a * _W[None, :]) @ a.T)


@dataclass(frozen=True)
class FactorFit:
    """One source's fit: loadings and the matrix's rates they were fitted at, with the data."""

    source: str
    models: tuple[str, ...]  # matrix model names
    loadings: tuple[float, ...]
    rates: tuple[float, ...]  # the matrix's train-split rate per model
    questions: int

    def loading(self, model: str | None) -> float:
        """A matrix model's loading; the source's mean for a model the matrix does not hold."""
        if model in self.models:
            return self.loadings[self.models.index(model)]
        return float(np.mean(self.loadings))

    def thresholds(self) -> np.ndarray:
        return np.array([threshold(r) for r in self.rates])


def fit_loadings(source: str, models: Sequence[str], outcomes: np.ndarray, sweeps: int = 8) -> FactorFit:
    """Loadings (one per model) whose pairwise P(both right) best matches `outcomes` (questions x
    models, booleans) in least squares, by coordinate-wise golden-section search in [0, 0.99].
    Deterministic: no random start."""
    x = np.asarray(outcomes, dtype=float)
    if x.ndim != 2 or x.shape[1] != len(models) or x.shape[0] < 2 or len(models) < 2:
        raise ValueError(f"{source}: need outcomes of at least 2 questions x 2 models, got shape {x.shape}")
    rates = x.mean(axis=0)
    observed = (x.T @ x) / x.shape[0]
    t = np.array([threshold(r) for r in rates])
    off = ~np.eye(len(models), dtype=bool)

    def loss(lam: np.ndarray) -> float:
        return float(((joint_correct(t, lam) - observed)[off] ** 2).sum())

    lam = np.full(len(models), 0.5)
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(sweeps):
        for i in range(len(models)):
            lo, hi = 0.0, _MAX_LOADING
            for _ in range(24):  # the bracket shrinks to 0.99 x 0.618^24 < 1e-5
                a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
                la, lb = lam.copy(), lam.copy()
                la[i], lb[i] = a, b
                if loss(la) <= loss(lb):
                    hi = b
                else:
                    lo = a
            lam[i] = (lo + hi) / 2
    return FactorFit(source, tuple(models), tuple(float(v) for v in lam), tuple(float(r) for r in rates), x.shape[0])


class LatentOutcomes:
    """Outcomes from the fitted factor model; every number is a pure function of (model,
    question, seed), so outcomes are the same in any call order and on any repetition."""

    def __init__(self, fits: Mapping[str, FactorFit], seed: int) -> None:
        self.fits = dict(fits)
        self.seed = seed
        self._posterior: dict[str, float] = {}

    def default_loading(self, model: str | None) -> float:
        """A source without matrix data: the model's loadings averaged over the fitted sources."""
        if not self.fits:
            return 0.0  # nothing to fit on: independent draws
        return float(np.mean([f.loading(model) for f in self.fits.values()]))

    def loading(self, model: str | None, source: str) -> float:
        fit = self.fits.get(source)
        return fit.loading(model) if fit is not None else self.default_loading(model)

    def latent(self, key: str, unit: float, records: Mapping[str, bool] | None, source: str) -> float:
        """z of a question: the prior draw, or with `records` (matrix model -> correct) a draw
        from the posterior given them, at the inverse-CDF point `unit`."""
        fit = self.fits.get(source)
        if not records or fit is None:
            return _inv(unit)
        if key not in self._posterior:
            names = [m for m in fit.models if m in records]
            idx = [fit.models.index(m) for m in names]
            t, lam = fit.thresholds()[idx], np.array(fit.loadings)[idx]
            p = np.clip(_correct_given_z(t, lam, _GRID), 1e-300, 1.0)
            ok = np.array([records[m] for m in names])[:, None]
            log_post = -0.5 * _GRID**2 + np.where(ok, np.log(p), np.log1p(-np.minimum(p, 1 - 1e-16))).sum(axis=0)
            w = np.exp(log_post - log_post.max())
            cdf = np.cumsum(w) / w.sum()
            self._posterior[key] = float(np.interp(unit, cdf, _GRID))
        return self._posterior[key]

    @staticmethod
    def noise(loading: float, z: float, unit: float) -> float:
        """y of a model with no record: l z + sqrt(1 - l^2) e, e at the inverse-CDF point `unit`."""
        return loading * z + math.sqrt(1.0 - loading**2) * _inv(unit)

    @staticmethod
    def noise_given_record(loading: float, z: float, rate: float, correct: bool, unit: float) -> float:
        """y of a recorded model, drawn given z and its record (y below its matrix threshold when
        the record is a success, above it when not)."""
        s = math.sqrt(1.0 - loading**2)
        b = _N.cdf((threshold(rate) - loading * z) / s)
        return loading * z + s * _inv(unit * b if correct else b + unit * (1.0 - b))
