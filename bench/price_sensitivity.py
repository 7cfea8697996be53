"""Price sensitivity of the local router: does retraining after a price rise move calls away?

1. Train the local router with cost weight alpha (default 0.9) on the built dataset.
2. Measure call share per model and EM by sampling the trained policy on training questions.
3. Make the most-used model ten times more expensive (input and output price) and retrain from
   the same warm start (the warm start does not depend on prices, so it is reused).
4. Measure again; print both call-share tables and check that the repriced model's share fell
   while EM stayed within the tolerance.

Usage: python bench/price_sensitivity.py [--alpha 0.9] [--steps 60] [--episodes 256]
Needs the dataset stage's output (artifacts/dataset) and data/pool (`make demo` builds both).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, without installing

from routerops.candidates.replay import ReplayPool
from routerops.candidates.types import QuestionInfo
from routerops.config import Params, load_params
from routerops.paths import project_root
from routerops.pool import Pool, load_pool, parse_pool
from routerops.rewards import ScoreItem, SlidingWindowNormalizer, score_batch
from routerops.rl_dataset import read_questions
from routerops.rollout import run_episodes
from routerops.runtime import encode_prompt, replay_pool
from routerops.training.local_backend import LocalTrainer, TrainResult
from routerops.training.tiny_policy import BatchedGenerator

ROOT = project_root()


def repriced(pool_file: Path, model: str, factor: float) -> Pool:
    import yaml

    raw = yaml.safe_load(pool_file.read_text())
    price = raw["pricing"]["prices"][model]
    price["input_usd_per_mtok"] = round(price["input_usd_per_mtok"] * factor, 6)
    price["output_usd_per_mtok"] = round(price["output_usd_per_mtok"] * factor, 6)
    raw["pricing"]["label"] += f"-{model}-x{factor:g}"
    return parse_pool(raw, f"{pool_file} ({model} x{factor:g})")


def measure(params: Params, pool: Pool, trained: TrainResult, questions: Sequence[QuestionInfo], replay: ReplayPool,
            episodes: int, seed: int) -> dict[str, Any]:
    """Sample the policy (temperature from params) and report call shares, EM and cost."""
    import torch

    torch.manual_seed(seed)
    model, tok = trained.model, trained.tokenizer
    lp = params.train_router.local
    rng = random.Random(seed)
    qs = [rng.choice(questions) for _ in range(episodes)]
    gen = BatchedGenerator(model, tok, temperature=lp.temperature, top_p=lp.top_p, max_batch=episodes)
    trajs = asyncio.run(run_episodes([(q, encode_prompt(q.text, pool, tok, params)) for q in qs],
                                     concurrency=episodes, generator=gen, tokenizer=tok, pool=pool,
                                     backend=replay, limits=params.router_limits()))
    scores, _ = score_batch([ScoreItem(t.segments, t.question.golden_answers, t.usages()) for t in trajs],
                            pool, params.rewards.alpha, SlidingWindowNormalizer(), params.rewards.outcome,
                            params.rewards.include_prompt_cost, params.rollout.format.rules())
    calls = Counter(c.model for t in trajs for c in t.calls if c.ok)
    total = sum(calls.values()) or 1
    return {"shares": {c.name: calls[c.name] / total for c in pool}, "em": sum(s.em for s in scores) / episodes,
            "format_valid": sum(s.format_valid for s in scores) / episodes,
            "usd_per_question": sum(t.cost_usd for t in trajs) / episodes,
            "calls_per_question": sum(calls.values()) / episodes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--episodes", type=int, default=256)
    ap.add_argument("--factor", type=float, default=10.0)
    ap.add_argument("--em-tolerance", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "price_sensitivity")
    args = ap.parse_args()

    params = load_params(ROOT / "params.yaml")
    tp = params.train_router
    params = params.model_copy(update={
        "rewards": params.rewards.model_copy(update={"alpha": args.alpha}),
        "train_router": tp.model_copy(update={"local": tp.local.model_copy(update={"grpo_steps": args.steps})})})
    dataset = ROOT / params.build_dataset.out_dir
    questions = read_questions(dataset, "train")

    def replay() -> ReplayPool:
        return replay_pool(params.candidates, ROOT / params.build_dataset.raw_dir, questions)

    if args.out.exists():
        shutil.rmtree(args.out)
    t0 = time.time()
    base_pool = load_pool(ROOT / "pool.yaml")
    base = LocalTrainer(params, base_pool, questions, replay(), args.out / "ckpt-base").run()
    before = measure(params, base_pool, base, questions, replay(), args.episodes, 1)
    top = max(before["shares"], key=before["shares"].get)
    new_pool = repriced(ROOT / "pool.yaml", top, args.factor)
    (args.out / "ckpt-repriced").mkdir(parents=True)
    shutil.copytree(args.out / "ckpt-base" / "sft", args.out / "ckpt-repriced" / "sft")  # same warm start
    retrained = LocalTrainer(params, new_pool, questions, replay(), args.out / "ckpt-repriced").run()
    after = measure(params, new_pool, retrained, questions, replay(), args.episodes, 1)

    print(f"\nlocal router, alpha={args.alpha}, {args.steps} GRPO steps, {args.episodes} sampled episodes each; "
          f"{top} made {args.factor:g}x more expensive ({time.time() - t0:.0f} s)\n")
    print("| model | USD/1M out before | share before | USD/1M out after | share after |")
    print("|---|---:|---:|---:|---:|")
    for c in base_pool:
        print(f"| {c.name} | {c.price.output_usd_per_mtok:.2f} | {before['shares'][c.name]:.3f} | "
              f"{new_pool.get(c.name).price.output_usd_per_mtok:.2f} | {after['shares'][c.name]:.3f} |")
    print("\n| metric | before | after |\n|---|---:|---:|")
    for k in ("em", "format_valid", "calls_per_question", "usd_per_question"):
        print(f"| {k} | {before[k]:.4g} | {after[k]:.4g} |")
    fell = after["shares"][top] < before["shares"][top]
    em_ok = abs(after["em"] - before["em"]) <= args.em_tolerance
    print(f"\n{top} share {before['shares'][top]:.3f} -> {after['shares'][top]:.3f} "
          f"({'fell' if fell else 'DID NOT FALL'}); EM {before['em']:.3f} -> {after['em']:.3f} "
          f"({'within' if em_ok else 'OUTSIDE'} +/-{args.em_tolerance})")
    (args.out / "result.json").write_text(json.dumps({"alpha": args.alpha, "steps": args.steps, "repriced": top,
                                                      "factor": args.factor, "before": before, "after": after,
                                                      "share_fell": fell, "em_within_tolerance": em_ok}, indent=2))
    raise SystemExit(0 if fell and em_ok else 1)


if __name__ == "__main__":
    main()
