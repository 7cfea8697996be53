"""KnnRouter: exact routing decisions over a hand-made embedding space, errors, and the real encoder.

The fake encoder maps each text to a unit vector chosen here, so every similarity, neighbour set
and mean score below can be worked out by hand. Score of a model on a training question:
EM - cost_weight x (cost - min cost) / (max cost - min cost), min and max over the whole table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from routerops.knn_router import KnnRouter, load_encoder

Outcomes = list[dict[str, tuple[float, float]]]


class FakeEncoder:
    """sentence-transformers' `encode` signature over a fixed table of unit vectors."""

    def __init__(self, vectors: Mapping[str, Sequence[float]]) -> None:
        self.vectors = {text: np.asarray(v, dtype=float) for text, v in vectors.items()}
        self.calls: list[tuple[list[str], bool, int, bool]] = []

    def encode(self, texts: list[str], normalize_embeddings: bool, batch_size: int,
               show_progress_bar: bool) -> np.ndarray:
        self.calls.append((texts, normalize_embeddings, batch_size, show_progress_bar))
        return np.stack([self.vectors[t] for t in texts])


# Three training questions on a quarter circle, (1, 0), (0.6, 0.8) and (0, 1), and two queries,
# each near one end. `big` is right on the east side, `small` on the north side; both on NE.
VECTORS = {
    "east": (1.0, 0.0), "northeast": (0.6, 0.8), "north": (0.0, 1.0),
    "near east": (0.96, 0.28), "near north": (0.28, 0.96),
}
TRAIN = ["east", "northeast", "north"]
# big always costs the most (normalised cost 1), small the least (0).
OUTCOMES: Outcomes = [
    {"big": (1.0, 0.010), "small": (0.0, 0.001)},
    {"big": (1.0, 0.010), "small": (1.0, 0.001)},
    {"big": (0.0, 0.010), "small": (1.0, 0.001)},
]


def router(k: int, cost_weight: float = 0.5, vectors: Mapping[str, Sequence[float]] = VECTORS,
           questions: Sequence[str] = TRAIN, outcomes: Outcomes = OUTCOMES) -> KnnRouter:
    return KnnRouter(FakeEncoder(vectors), k=k, cost_weight=cost_weight).fit(questions, outcomes)


def test_nearest_neighbour_decides_with_k_1() -> None:
    # Scores at cost_weight 0.5: east big 0.5 / small 0; north big -0.5 / small 1.
    assert router(k=1).route(["near east", "near north", "east", "north"]) == ["big", "small", "big", "small"]


@pytest.mark.parametrize(("k", "pick"), [(1, "big"), (2, "small")])
def test_mean_over_the_k_nearest(k: int, pick: str) -> None:
    # near east's nearest is east (sim 0.96), then northeast (0.8), then north (0.28). Equal costs,
    # so scores are EM: with k 1, big 1 beats small 0.6; with k 2, big (1 + 0) / 2 = 0.5 loses to
    # small (0.6 + 1) / 2 = 0.8.
    outcomes: Outcomes = [{"big": (1.0, 0.01), "small": (0.6, 0.01)}, {"big": (0.0, 0.01), "small": (1.0, 0.01)},
                          {"big": (1.0, 0.01), "small": (0.0, 0.01)}]
    assert router(k=k, outcomes=outcomes).route(["near east"]) == [pick]


def test_a_tie_goes_to_the_first_model_name_in_sorted_order() -> None:
    # near east's two nearest are east (0.96) and northeast (0.8): big (0.5 + 0.5) / 2 = 0.5 and
    # small (0 + 1) / 2 = 0.5, exactly; argmax takes the first of the sorted names.
    assert router(k=2).route(["near east"]) == ["big"]
    renamed = [{"zeta" if m == "big" else "alpha": v for m, v in o.items()} for o in OUTCOMES]
    assert router(k=2, outcomes=renamed).route(["near east"]) == ["alpha"]  # "alpha" is small here


def test_k_larger_than_the_training_set_uses_every_question() -> None:
    # Mean over all three: big (0.5 + 0.5 - 0.5) / 3 = 1/6, small (0 + 1 + 1) / 3 = 2/3, wherever the query is.
    assert router(k=100).route(["near east", "near north"]) == ["small", "small"]
    assert router(k=3).route(["near east", "near north"]) == ["small", "small"]


@pytest.mark.parametrize(("cost_weight", "pick"), [(0.0, "big"), (0.4, "big"), (0.6, "small"), (5.0, "small")])
def test_cost_weight_flips_the_choice(cost_weight: float, pick: str) -> None:
    # Mean EM over both questions: big 1.0, small 0.5; normalised cost: big 1, small 0. So big
    # scores 1 - w, small 0.5: big while w < 0.5, small above.
    outcomes: Outcomes = [{"big": (1.0, 0.02), "small": (0.0, 0.001)}, {"big": (1.0, 0.02), "small": (1.0, 0.001)}]
    knn = router(k=2, cost_weight=cost_weight, questions=["east", "north"], outcomes=outcomes)
    assert knn.route(["near east"]) == [pick]


@pytest.mark.parametrize(("cost_weight", "pick"), [(0.5, "mid"), (0.3, "dear")])
def test_cost_is_normalised_over_the_whole_table(cost_weight: float, pick: str) -> None:
    # Costs 0.002 / 0.006 / 0.010 normalise to 0 / 0.5 / 1. Scores: cheap 0; mid 0.8 - 0.5 w;
    # dear 1 - w. At w 0.5: mid 0.55 > dear 0.5; at w 0.3: dear 0.7 > mid 0.65. Raw dollar costs
    # (fractions of a cent) would never outweigh an EM difference; scaling them changes nothing.
    outcomes: Outcomes = [{"cheap": (0.0, 0.002), "mid": (0.8, 0.006), "dear": (1.0, 0.010)}]
    assert router(k=1, cost_weight=cost_weight, questions=["east"], outcomes=outcomes).route(["near east"]) == [pick]
    scaled = [{m: (em, 1000 * c) for m, (em, c) in o.items()} for o in outcomes]
    assert router(k=1, cost_weight=cost_weight, questions=["east"], outcomes=scaled).route(["near east"]) == [pick]


def test_equal_costs_leave_em_alone() -> None:
    # No cost spread: every normalised cost is 0, whatever the weight.
    outcomes: Outcomes = [{"a": (0.0, 0.005), "b": (1.0, 0.005)}]
    assert router(k=1, cost_weight=100.0, questions=["east"], outcomes=outcomes).route(["near east"]) == ["b"]


def test_the_encoder_is_asked_for_normalised_embeddings_without_progress_bars() -> None:
    encoder = FakeEncoder(VECTORS)
    knn = KnnRouter(encoder, k=1).fit(TRAIN, OUTCOMES)
    knn.route(("near east", "near north"))
    assert encoder.calls == [(TRAIN, True, 64, False), (["near east", "near north"], True, 64, False)]


@pytest.mark.parametrize(("questions", "outcomes"), [
    pytest.param([], [], id="empty"),
    pytest.param(["east", "north"], OUTCOMES[:1], id="fewer-outcomes"),
    pytest.param(["east"], OUTCOMES[:2], id="more-outcomes"),
])
def test_fit_needs_one_outcome_mapping_per_question(questions: list[str], outcomes: Outcomes) -> None:
    encoder = FakeEncoder(VECTORS)
    with pytest.raises(ValueError, match=r"^need one outcome mapping per training question$"):
        KnnRouter(encoder).fit(questions, outcomes)
    assert encoder.calls == []  # refused before encoding anything


def test_route_before_fit_is_an_error() -> None:
    with pytest.raises(RuntimeError, match=r"^fit the kNN router first$"):
        KnnRouter(FakeEncoder(VECTORS)).route(["near east"])


@pytest.mark.slow  # loading sentence-transformers and the model takes several seconds on CPU
def test_packaged_encoder_routes_a_paraphrase_like_its_question() -> None:
    train = ["What is the capital of France?", "Who wrote the play Hamlet?", "How many legs does a spider have?"]
    experts = ["geo", "lit", "bio"]
    # Each question is answered by its own expert only, at one price: the nearest question decides.
    outcomes: Outcomes = [{m: (1.0 if m == expert else 0.0, 0.001) for m in experts} for expert in experts]
    knn = KnnRouter(load_encoder(), k=1).fit(train, outcomes)
    paraphrases = ["Which city is the capital of France?", "Who is the author of Hamlet?",
                   "What number of legs do spiders have?"]
    assert knn.route(paraphrases) == experts
    assert knn.route(train) == experts
