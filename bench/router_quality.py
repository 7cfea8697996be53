"""Router quality over training seeds and cost weights, and with a candidate it never saw.

Trains the local router through the train_router stage's own `run` and evaluates it through the
evaluate_router stage's (420 test questions, every baseline, paired bootstrap), once per
configuration:

- **seeds** (`--seeds`, at params' alpha): is the router dominated, does it ask another model after
  a decline, does it copy what a reply states; mean and range over the seeds;
- **alpha sweep** (`--alphas`, at the first seed): does cost fall as alpha rises (Router-R1's cost
  study); the warm start does not depend on alpha, so each alpha reuses the seed's;
- **unseen candidate** (`--unseen`): the first seed's router evaluated on the pool plus one model it
  was never trained with, given by name, descriptor and price only (no retraining); its call share
  says whether the router routes to it;
- **a repriced pool** (`--reprice NAME=FACTOR`, repeatable): every configuration trains and is
  evaluated with those candidates' prices multiplied, as after a price change. On pool.yaml the most
  accurate model is also among the cheapest per call, so alpha has nothing to trade; with it
  priced up, the alpha sweep shows whether alpha prices accuracy against cost. The warm start does
  not depend on prices (its traces pick models at random), so `--warm-start` may reuse one trained
  on pool.yaml.

Beside each router's top call share the table gives the reward's best single model at that
configuration's alpha and pool, and how far it leads the next (bench/reward_optimum.py, on the
training questions): the model a router trained at that alpha should mostly call.

Writes `<out>/results.json`, `<out>/report.md` (the tables) and `<out>/pareto.png` (every router
point over the baselines). Each configuration trains in its own checkpoint folder and writes its
evaluation last, so a killed bench resumes where it stopped and skips what is done.

Usage: python bench/router_quality.py [--seeds 0 1 2] [--alphas 0 0.6 0.9] [--unseen] [--steps N]
       [--reprice NAME=FACTOR ...] [--out .routerops/bench/router_quality]
Needs the dataset stage's output (artifacts/dataset) and data/ (`make demo` builds both). About
10 minutes per seed (warm start 5.5, GRPO 3, evaluation 1) and 4 per extra alpha on an idle 2-core
machine (2026-12-08);
`--warm-start checkpoints/train_router` reuses the demo's warm start for the first seed, which then
trains exactly the demo's router (the trainer reseeds before GRPO); more folders serve the next seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, without installing

from bench.pool_variants import UNSEEN_NAME, pool_variant, repriced_pool
from bench.reward_optimum import training_outcomes
from routerops.config import Params, load_params
from routerops.io import write_json_atomic, write_text_atomic
from routerops.paths import project_root
from routerops.pool import Pool
from routerops.report import pareto_figure
from routerops.reward_optimum import Optimum, optimum
from routerops.rl_dataset import read_questions
from stages import evaluate_router, train_router

ROOT = project_root()


@dataclass(frozen=True)
class Config:
    name: str
    seed: int
    alpha: float
    unseen: bool = False

    @property
    def trains(self) -> str:
        """The configuration whose router this one uses (an unseen-model run evaluates another's)."""
        return f"seed{self.seed}-alpha{self.alpha:g}"


def configs(seeds: Sequence[int], alphas: Sequence[float], alpha: float, unseen: bool) -> list[Config]:
    out = [Config(f"seed{s}-alpha{alpha:g}", s, alpha) for s in seeds]
    out += [Config(f"seed{seeds[0]}-alpha{a:g}", seeds[0], a) for a in alphas if a != alpha]
    if unseen:
        out.append(Config(f"seed{seeds[0]}-alpha{alpha:g}-unseen", seeds[0], alpha, unseen=True))
    return out


def warm_starts(seeds: Sequence[int], folders: Sequence[Path]) -> dict[int, Path]:
    """The seed each `--warm-start` folder serves, in `--seeds` order; seeds left over train their own."""
    if len(folders) > len(seeds):
        raise ValueError(f"{len(folders)} warm-start folders for {len(seeds)} seeds")
    missing = [str(f) for f in folders if not (f / "sft" / "_COMPLETE").is_file()]
    if missing:
        raise ValueError(f"no complete warm start (sft/_COMPLETE) in {', '.join(missing)}")
    return dict(zip(seeds, folders, strict=False))


def params_for(base: Params, c: Config, steps: int | None) -> Params:
    tp = base.train_router
    local = tp.local if steps is None else tp.local.model_copy(update={"grpo_steps": steps})
    return base.model_copy(update={
        "rewards": base.rewards.model_copy(update={"alpha": c.alpha}),
        "train_router": tp.model_copy(update={"seed": c.seed, "local": local})})


def train(params: Params, c: Config, pool: Pool, out: Path, done: Mapping[int, Path]) -> Path:
    """Train `c`'s router (resuming its checkpoints; the seed's warm start reused); its directory.
    An unseen-model configuration gets the router of the configuration it evaluates, trained once."""
    router = out / "routers" / c.trains
    if (router / "routerops.json").is_file():
        return router
    ckpt = out / "checkpoints" / c.trains
    inputs = train_router.Inputs(pool, ROOT / params.build_dataset.out_dir, ROOT / params.build_dataset.raw_dir,
                                 ckpt, ROOT)
    resumable = train_router.prepare_checkpoints(ckpt, train_router.fingerprint(params, inputs))
    warm = done.get(c.seed)
    if not resumable and warm is not None and (warm / "sft" / "_COMPLETE").is_file():
        shutil.copytree(warm / "sft", ckpt / "sft")  # the warm start does not depend on alpha
    result = train_router.run(params, inputs)
    logs = out / "train" / c.trains
    train_router.write(result, router, logs / "train.json", logs / "history.csv")
    return router


def evaluate(params: Params, c: Config, pool: Pool, router: Path, out: Path) -> dict[str, Any]:
    metrics = out / "evaluation" / f"{c.name}.json"
    if not metrics.is_file():
        inputs = evaluate_router.Inputs(pool, ROOT / params.build_dataset.out_dir, router,
                                        ROOT / params.build_dataset.raw_dir)
        evaluate_router.write(evaluate_router.run(params, inputs), out / "evaluation" / c.name, metrics)
    result: dict[str, Any] = json.loads(metrics.read_text())
    return result


def reward_optima(params: Params, pool: Pool, alphas: Sequence[float]) -> dict[float, Optimum]:
    """The reward's best single model at each alpha on the training questions (bench/reward_optimum.py):
    what each configuration's router should mostly call."""
    outcomes, normalizer = training_outcomes(params, pool, read_questions(ROOT / params.build_dataset.out_dir, "train"))
    return {a: optimum(outcomes, normalizer, a) for a in sorted(set(alphas))}


def summary(c: Config, m: Mapping[str, Any], unseen_name: str, best: Optimum | None = None) -> dict[str, Any]:
    r = m["average"]["router"]
    b = m["router_behaviour"]
    return {"config": c.name, "seed": c.seed, "alpha": c.alpha, "unseen": c.unseen, "em": r["em"],
            "usd_per_question": r["usd_per_question"], "calls_per_question": r["calls_per_question"],
            "format_valid": r["format_valid"], "call_share": r["call_share"],
            "unseen_share": r["call_share"].get(unseen_name, 0.0) if c.unseen else None,
            "dominated_by": m["verdict"]["dominated_by"], "dominated_beyond_ci": m["verdict"]["dominated_beyond_ci"],
            "copy_fidelity": b["copy_fidelity"], "gold_in_reply": b["gold_in_reply"],
            "first_declined": b["first_declined"], "asked_other_model": b["asked_other_model"],
            "em_after_decline": b["em_after_decline"], "reasked_same_model": b["reasked_same_model"],
            "reward_best_model": best.best.policy if best else None,
            "reward_best_margin": best.margin if best else None}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _spread(rows: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0) -> str:
    vals = [row[key] * scale for row in rows if row[key] is not None]
    if not vals:
        return "-"
    return f"{statistics.fmean(vals):.3f} ({min(vals):.3f}..{max(vals):.3f})"


def _top_share(share: Mapping[str, float]) -> str:
    if not share:
        return "-"
    name, value = max(share.items(), key=lambda kv: kv[1])
    return f"{name.removesuffix('-Instruct')} {value:.2f}"


def _best(row: Mapping[str, Any]) -> str:
    name = row.get("reward_best_model")
    return "-" if name is None else f"{name.removesuffix('-Instruct')} ({row['reward_best_margin']:.3f})"


def report(rows: Sequence[Mapping[str, Any]], seeds_alpha: float, baselines: Mapping[str, Any],
           steps: int, seconds: float, unseen_baselines: Mapping[str, Any] | None = None,
           reprice: Mapping[str, float] | None = None) -> str:
    cols = ["config", "EM", "micro-USD/q", "calls/q", "fmt", "copy fidelity", "declined first",
            "asked another", "EM after decline", "re-asked same", "dominated beyond CI", "top call share",
            "reward's best model (ahead by)"]
    lines = [f"# Router quality ({steps} GRPO steps per router; {seconds / 60:.0f} min)", ""]
    if reprice:
        lines += ["Pool: pool.yaml with " + ", ".join(f"{n}'s prices x{f:g}" for n, f in reprice.items())
                  + " (training and evaluation).", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join([
            row["config"], _fmt(row["em"]), _fmt(row["usd_per_question"] * 1e6, 1), _fmt(row["calls_per_question"], 2),
            _fmt(row["format_valid"]), f"{_fmt(row['copy_fidelity'])} of {row['gold_in_reply']}",
            str(row["first_declined"]), _fmt(row["asked_other_model"]), _fmt(row["em_after_decline"]),
            _fmt(row["reasked_same_model"]), ", ".join(row["dominated_beyond_ci"]) or "none",
            _top_share(row["call_share"]), _best(row)]) + " |")
    seeds = [r for r in rows if r["alpha"] == seeds_alpha and not r["unseen"]]
    lines += ["", f"## Over {len(seeds)} seeds at alpha {seeds_alpha:g}: mean (min..max)", "",
              "| metric | value |", "|---|---|"]
    for key, label, scale in (("em", "EM", 1.0), ("usd_per_question", "micro-USD per question", 1e6),
                              ("copy_fidelity", "copy fidelity", 1.0), ("asked_other_model", "asked another model "
                               "after a decline", 1.0), ("em_after_decline", "EM after a decline", 1.0)):
        lines.append(f"| {label} | {_spread(seeds, key, scale)} |")
    beaten = sorted({b for r in seeds for b in r["dominated_beyond_ci"]})
    lines.append(f"| seeds dominated beyond the interval | {sum(bool(r['dominated_beyond_ci']) for r in seeds)} of "
                 f"{len(seeds)} ({', '.join(beaten) or 'by nothing'}) |")
    lines += ["", "## Baselines (the same in every configuration)", "", "| system | EM | micro-USD/q |",
              "|---|---|---|"]
    for name, m in sorted(baselines.items(), key=lambda kv: kv[1]["usd_per_question"]):
        if name != "router":
            lines.append(f"| {name} | {m['em']:.3f} | {m['usd_per_question'] * 1e6:.1f} |")
    unseen = [r for r in rows if r["unseen"]]
    if unseen:
        u = unseen[0]
        alone = (unseen_baselines or {}).get(f"single:{UNSEEN_NAME}", {}).get("em", float("nan"))
        lines += ["", f"## Unseen candidate {UNSEEN_NAME} (never in training; descriptor and price only)", "",
                  f"Its call share {u['unseen_share']:.3f}; router EM {u['em']:.3f} at "
                  f"{u['usd_per_question'] * 1e6:.1f} micro-USD, against {seeds[0]['em']:.3f} at "
                  f"{seeds[0]['usd_per_question'] * 1e6:.1f} on the pool it was trained with. Single "
                  f"{UNSEEN_NAME}: EM {alone:.3f}."]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any], path: Path,
         reprice: Mapping[str, float] | None = None) -> None:
    import matplotlib.pyplot as plt

    from routerops.evaluation import SystemMetrics

    # metrics/evaluation.json holds each SystemMetrics but its system and data source
    base = [SystemMetrics(system=s, data_source="average", **m) for s, m in metrics["average"].items() if s != "router"]
    title = "Local router over seeds and alpha (red: seeds; orange: alpha sweep)"
    if reprice:
        title += "\npool.yaml with " + ", ".join(f"{n} x{f:g}" for n, f in reprice.items())
    fig = pareto_figure(base, title)
    ax = fig.axes[0]
    for row in rows:
        if row["unseen"]:
            continue
        seed_run = row["alpha"] == rows[0]["alpha"]
        ax.scatter([row["usd_per_question"] * 1e6], [row["em"]], marker="*", s=200, zorder=4,
                   color="tab:red" if seed_run else "tab:orange")
        ax.annotate(f"s{row['seed']}" if seed_run else f"a={row['alpha']:g}",
                    (row["usd_per_question"] * 1e6, row["em"]), textcoords="offset points", xytext=(6, -10),
                    fontsize=8, color="tab:red" if seed_run else "tab:orange")
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--alphas", type=float, nargs="*", default=[0.0, 0.6, 0.9])
    ap.add_argument("--unseen", action="store_true", help="also evaluate the first seed's router with an unseen model")
    ap.add_argument("--steps", type=int, default=None, help="GRPO steps (default: params)")
    ap.add_argument("--warm-start", type=Path, nargs="+", default=[],
                    help="checkpoint folders whose sft/ warm starts the seeds reuse, in --seeds order (e.g. the "
                         "demo's checkpoints/train_router for seed 0, when only GRPO or reward settings differ)")
    ap.add_argument("--reprice", action="append", default=[], metavar="NAME=FACTOR",
                    help="multiply a candidate's prices for every configuration (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / ".routerops" / "bench" / "router_quality")
    args = ap.parse_args()
    try:
        warm = warm_starts(args.seeds, args.warm_start)
    except ValueError as exc:
        ap.error(f"--warm-start: {exc}")
    base = load_params(ROOT / "params.yaml")
    reprice, pool = repriced_pool(ap, args.reprice, ROOT / "pool.yaml")
    alpha = base.rewards.alpha
    steps = args.steps if args.steps is not None else base.train_router.local.grpo_steps
    t0 = time.time()
    plan = configs(args.seeds, args.alphas, alpha, args.unseen)
    optima = reward_optima(base, pool, [c.alpha for c in plan])
    rows: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    unseen_metrics: dict[str, Any] = {}
    for c in plan:
        params = params_for(base, c, args.steps)
        print(f"== {c.name}", flush=True)
        router = train(params, c, pool, args.out, warm)
        warm.setdefault(c.seed, args.out / "checkpoints" / c.trains)
        m = evaluate(params, c, pool_variant(ROOT / "pool.yaml", reprice, unseen=True) if c.unseen else pool,
                     router, args.out)
        rows.append(summary(c, m, UNSEEN_NAME, None if c.unseen else optima[c.alpha]))
        if not c.unseen:
            last = m
        else:
            unseen_metrics = m
        print(json.dumps(rows[-1]), flush=True)
    text = report(rows, alpha, last["average"], steps, time.time() - t0, unseen_metrics.get("average"), reprice)
    write_json_atomic(args.out / "results.json", {"steps": steps, "alpha": alpha, "reprice": reprice, "rows": rows,
                                                  "baselines": last["average"]})
    plot(rows, last, args.out / "pareto.png", reprice)
    write_text_atomic(args.out / "report.md", text)
    print(text)


if __name__ == "__main__":
    main()
