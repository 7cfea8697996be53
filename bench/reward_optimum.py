"""What the cost-aware reward asks for on a pool, over alpha: the best single model per alpha, with
no training and no calls (routerops/reward_optimum.py).

On the training questions, each candidate's replayed outcome and one call's cost (as the run's
cost calibration bills it) give the Router-R1 reward of always asking that model and copying its
answer; the best model at each alpha is what a router trained at that alpha should route to, and
an alpha sweep can only sit at distinct points where that model changes. The per-question oracle
bounds what routing question by question could add.

Writes `<out>/report.md` (the table), `<out>/results.json` and `<out>/reward_by_alpha.png` (each
model's reward over alpha; the best marked).

Usage: python bench/reward_optimum.py [--alphas 0 0.1 ... 1] [--reprice NAME=FACTOR ...]
       [--out .routerops/bench/reward_optimum]
Needs the dataset stage's output (artifacts/dataset) and data/ (`make demo` builds both). Seconds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, without installing

from bench.pool_variants import repriced_pool
from routerops.candidates.types import QuestionInfo
from routerops.config import Params, load_params
from routerops.cost_calibration import training_calibration
from routerops.io import write_json_atomic, write_text_atomic
from routerops.paths import project_root
from routerops.pool import Pool
from routerops.reward_optimum import ORACLE, ModelOutcomes, Optimum, optimum_of, policy_values, replay_outcomes
from routerops.rewards import FrozenBoundsNormalizer
from routerops.rl_dataset import read_questions
from routerops.runtime import replay_pool

ROOT = project_root()
DEFAULT_ALPHAS = [round(0.1 * i, 1) for i in range(11)]


def training_outcomes(params: Params, pool: Pool,
                      questions: Sequence[QuestionInfo]) -> tuple[list[ModelOutcomes], FrozenBoundsNormalizer]:
    """Each candidate's replayed outcomes and call costs on the training questions, and the cost
    bounds a training run on `pool` calibrates."""
    replay = replay_pool(params.candidates, ROOT / params.build_dataset.raw_dir, questions)
    outcomes = replay_outcomes(pool, questions, replay, params.rewards.include_prompt_cost)
    return outcomes, training_calibration(params, pool, questions).normalizer()


def optima(params: Params, pool: Pool, questions: Sequence[QuestionInfo],
           alphas: Sequence[float]) -> tuple[list[Optimum], dict[str, list[float]]]:
    """The optimum at each alpha, and each policy's reward at each alpha (for the plot)."""
    outcomes, normalizer = training_outcomes(params, pool, questions)
    curves: dict[str, list[float]] = {}
    rows = []
    for a in alphas:
        values = policy_values(outcomes, normalizer, a)
        rows.append(optimum_of(values))
        for v in values:
            curves.setdefault(v.policy, []).append(v.reward)
    return rows, curves


def _short(name: str) -> str:
    return name.removesuffix("-Instruct")


def report(rows: Sequence[Optimum], label: str, questions: int) -> str:
    lines = [f"# What the reward asks for: {label}", "",
             f"Mean Router-R1 reward of always asking one model (its answer copied, format valid) over the "
             f"{questions} training questions; cost normalised by the run's calibrated bounds.", "",
             "| alpha | best model | reward | ahead of the next by | next | its EM | micro-USD per call | "
             "per-question oracle |", "|---|---|---|---|---|---|---|---|"]
    for o in rows:
        nxt = _short(o.runner_up.policy) if o.runner_up else "-"
        lines.append(f"| {o.alpha:g} | {_short(o.best.policy)} | {o.best.reward:.3f} | {o.margin:.3f} | {nxt} | "
                     f"{o.best.em:.3f} | {o.best.usd_per_question * 1e6:.1f} | {o.oracle.reward:.3f} |")
    changes = [f"{_short(a.best.policy)} -> {_short(b.best.policy)} between alpha {a.alpha:g} and {b.alpha:g}"
               for a, b in pairwise(rows) if a.best.policy != b.best.policy]
    lines += ["", "The best model changes: " + ("; ".join(changes) if changes else
                                                 "never (one point is all an alpha sweep can reach)") + "."]
    return "\n".join(lines) + "\n"


def plot(alphas: Sequence[float], curves: Mapping[str, Sequence[float]], rows: Sequence[Optimum], path: Path,
         label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, ys in sorted(curves.items()):
        if name == ORACLE:
            ax.plot(alphas, ys, "k--", label=ORACLE)
        else:
            ax.plot(alphas, ys, marker=".", label=_short(name))
    ax.scatter([o.alpha for o in rows], [o.best.reward for o in rows], s=80, facecolors="none", edgecolors="red",
               zorder=4, label="best single model")
    ax.set_xlabel("alpha (cost weight)")
    ax.set_ylabel("mean reward on the training questions")
    ax.set_title(f"Reward of always asking one model\n{label}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def to_json(rows: Sequence[Optimum], reprice: Mapping[str, float]) -> dict[str, Any]:
    return {"reprice": dict(reprice), "rows": [
        {"alpha": o.alpha, "best": vars(o.best), "runner_up": vars(o.runner_up) if o.runner_up else None,
         "margin": o.margin, "oracle": vars(o.oracle)} for o in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alphas", type=float, nargs="+", default=DEFAULT_ALPHAS)
    ap.add_argument("--reprice", action="append", default=[], metavar="NAME=FACTOR",
                    help="multiply a candidate's prices (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / ".routerops" / "bench" / "reward_optimum")
    args = ap.parse_args()
    if any(not 0.0 <= a <= 1.0 for a in args.alphas):
        ap.error(f"--alphas must lie in [0, 1], got {args.alphas}")
    params = load_params(ROOT / "params.yaml")
    reprice, pool = repriced_pool(ap, args.reprice, ROOT / "pool.yaml")
    label = "pool.yaml" + ("".join(f", {n} x{f:g}" for n, f in reprice.items()) if reprice else "")
    try:
        questions = read_questions(ROOT / params.build_dataset.out_dir, "train")
    except FileNotFoundError as exc:
        sys.exit(f"{exc} (`make demo` builds it)")
    rows, curves = optima(params, pool, questions, args.alphas)
    text = report(rows, label, len(questions))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "results.json", to_json(rows, reprice))
    plot(args.alphas, curves, rows, args.out / "reward_by_alpha.png", label)
    write_text_atomic(args.out / "report.md", text)
    print(text)


if __name__ == "__main__":
    main()
