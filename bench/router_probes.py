"""Probes of a local router: where its first call goes, what it does after a decline, and how
exactly it copies.

Three measurements on one policy directory (the trained router, or a checkpoint's `sft` warm start):

0. **First call.** The share of sampled first turns (GRPO's sampling settings) naming each
   candidate, answering at once, or invalid: on a warm start, where RL starts from (GRPO locks
   onto one model within ~20 steps, so the start's shares matter); on a router, where it ended.
1. **After a decline.** For each candidate X, on training prompts: the policy asked X and X
   declined. The table gives, per X, the share of sampled next turns (temperature 1) that ask
   each candidate, answer, or are invalid; a router that re-asks X shows a large diagonal, one that
   learnt nothing about the decline shows the same row for every X.
2. **Copy.** Greedy answers after one reply that states a test-set gold answer: the share copied
   exactly, by the answer's length in policy tokens and by kind (holding a digit; else holding one
   token twice in a row, where a small model's copy loses its place; else the rest).

Usage: python bench/router_probes.py [--router artifacts/router] [--prompts 16] [--samples 8] [--answers 400]
Needs the dataset stage's output (artifacts/dataset); `make demo` builds both.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from routerops.policy import CausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, without installing

from routerops.candidates.replay import CORRECT_TEMPLATES, DECLINE_TEMPLATES
from routerops.config import load_params
from routerops.paths import project_root
from routerops.policy import answer_turn, hf_generate, search_turn
from routerops.pool import Pool, load_pool
from routerops.protocol import Answer, Route, parse_turn, render_observation
from routerops.rl_dataset import read_questions
from routerops.runtime import encode_prompt
from routerops.tokens import decode_text
from routerops.training.local_backend import DELEGATE_QUERY
from routerops.training.tiny_policy import load_policy

_BUCKETS = ((1, 1), (2, 2), (3, 3), (4, 4), (5, 6), (7, 9), (10, 15))


def _sampled_turns(model: CausalLM, tok: PreTrainedTokenizerFast, prefix: list[int], pool: Pool, samples: int,
                   top_p: float = 1.0) -> Counter[str]:
    """What `samples` turns sampled at temperature 1 after `prefix` do: a model's name, `answer`,
    or `other` (an invalid or unknown route)."""
    counts: Counter[str] = Counter()
    ids = torch.tensor([prefix] * samples)
    with torch.no_grad():
        gen, _ = hf_generate(model, tok, ids, torch.ones_like(ids), max_new_tokens=48, greedy=False,
                             temperature=1.0, top_p=top_p, stop=(), pad_token_id=tok.pad_token_id)
    for row in gen:
        action = parse_turn(decode_text(tok, row.tolist()), pool)
        counts[action.model if isinstance(action, Route) else "answer" if isinstance(action, Answer)
               else "other"] += 1
    return counts


def first_calls(model: CausalLM, tok: PreTrainedTokenizerFast, prompts: list[list[int]], pool: Pool, samples: int,
                top_p: float) -> Counter[str]:
    """The first turn over `samples` samples per prompt, at GRPO's sampling settings: where RL starts
    from (a warm start's choices) or where it ended (a router's)."""
    counts: Counter[str] = Counter()
    for prompt in prompts:
        counts += _sampled_turns(model, tok, prompt, pool, samples, top_p)
    return counts


def after_decline(model: CausalLM, tok: PreTrainedTokenizerFast, prompts: list[list[int]], pool: Pool, samples: int
                  ) -> dict[str, Counter[str]]:
    """Per declined model: what the policy's next turn does, over `samples` sampled turns per
    prompt at temperature 1 (a model's name, `answer`, or `other` for an invalid or unknown route)."""
    table: dict[str, Counter[str]] = {}
    for first in pool.names:
        counts: Counter[str] = Counter()
        for i, prompt in enumerate(prompts):
            decline = DECLINE_TEMPLATES[i % len(DECLINE_TEMPLATES)]
            text = search_turn(first, DELEGATE_QUERY) + render_observation(decline)
            counts += _sampled_turns(model, tok, prompt + tok.encode(text, add_special_tokens=False), pool, samples)
        table[first] = counts
    return table


def kind(tok: PreTrainedTokenizerFast, answer: str) -> str:
    """`digit`, `repeat` (one token twice in a row) or `other`."""
    if any(c.isdigit() for c in answer):
        return "digit"
    ids = tok.encode(f" {answer}", add_special_tokens=False)
    return "repeat" if any(a == b for a, b in pairwise(ids)) else "other"


def copies(model: CausalLM, tok: PreTrainedTokenizerFast, prompt_of: Callable[[str], list[int]],
           answers: list[tuple[str, str]], names: list[str],
           rng: random.Random) -> dict[int, list[int]]:
    """Exact-copy outcomes (1/0) by answer length in tokens."""
    out: dict[int, list[int]] = defaultdict(list)
    for n, ok in copy_outcomes(model, tok, prompt_of, answers, names, rng):
        out[n].append(ok)
    return out


def copy_outcomes(model: CausalLM, tok: PreTrainedTokenizerFast, prompt_of: Callable[[str], list[int]],
                  answers: list[tuple[str, str]], names: list[str], rng: random.Random) -> list[tuple[int, int]]:
    """(answer length in tokens, exact copy 1/0) for each of `answers`, in order."""
    out: list[tuple[int, int]] = []
    close = tok.encode("</answer>", add_special_tokens=False)
    for question, a in answers:
        head = answer_turn(a)
        head = head[: head.index("<answer>") + len("<answer>")]
        text = (search_turn(rng.choice(names), DELEGATE_QUERY)
                + render_observation(rng.choice(CORRECT_TEMPLATES).format(a=a)) + head)
        prefix = prompt_of(question) + tok.encode(text, add_special_tokens=False)
        want = tok.encode(f" {a}", add_special_tokens=False)
        ids = torch.tensor([prefix])
        with torch.no_grad():
            gen, _ = hf_generate(model, tok, ids, torch.ones_like(ids), max_new_tokens=len(want) + len(close),
                                 greedy=True, temperature=1.0, top_p=1.0, stop=(), pad_token_id=tok.pad_token_id)
        got = gen[0].tolist()
        out.append((len(want), int(got[: len(want) + len(close)] == want + close)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--router", type=Path, default=None, help="policy directory (default: train_router.out_dir)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8, help="sampled next turns per prompt and declined model")
    ap.add_argument("--answers", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    root = project_root()
    params = load_params(root / "params.yaml")
    pool = load_pool(root / "pool.yaml")
    model, tok = load_policy(args.router or root / params.train_router.out_dir)
    model.eval()
    rng = random.Random(args.seed)
    dataset = root / params.build_dataset.out_dir
    train = read_questions(dataset, "train")
    test = read_questions(dataset, "test")
    names = list(pool.names)

    def prompt_of(question: str) -> list[int]:
        return encode_prompt(question, pool, tok, params)

    prompts = [prompt_of(q.text) for q in rng.sample(train, min(args.prompts, len(train)))]
    short = {n: n.removesuffix("-Instruct") for n in names}
    cols = [*names, "answer", "other"]
    opening = first_calls(model, tok, prompts, pool, args.samples, params.train_router.local.top_p)
    n_first = sum(opening.values())
    print(f"## First turn: {args.samples} samples on each of {len(prompts)} training prompts "
          f"(temperature 1, top-p {params.train_router.local.top_p:g})\n")
    print("| " + " | ".join(short.get(c, c) for c in cols) + " |")
    print("|" + "---|" * len(cols))
    print("| " + " | ".join(f"{opening[c] / n_first:.2f}" for c in cols) + " |\n")
    table = after_decline(model, tok, prompts, pool, args.samples)
    print(f"## After a decline: the next turn, {args.samples} samples on each of {len(prompts)} training prompts\n")
    print("| declined | " + " | ".join(short.get(c, c) for c in cols) + " | same model |")
    print("|---|" + "---|" * (len(cols) + 1))
    for first in names:
        row, n = table[first], sum(table[first].values())
        print(f"| {short[first]} | " + " | ".join(f"{row[c] / n:.2f}" for c in cols) + f" | {row[first] / n:.2f} |")

    answers = [(q.text, q.golden_answers[0]) for q in test if q.golden_answers]
    answers = rng.sample(answers, min(args.answers, len(answers)))
    cap = params.train_router.local.max_tokens_per_turn
    # An answer longer than a turn cannot be written whole, whatever the policy learnt.
    too_long = sum(len(tok.encode(f" {a}", add_special_tokens=False)) > cap for _, a in answers)
    answers = [(q, a) for q, a in answers if len(tok.encode(f" {a}", add_special_tokens=False)) <= cap]
    by_len: dict[int, list[int]] = defaultdict(list)
    by_kind: dict[str, list[int]] = defaultdict(list)
    for (_, a), (n, ok) in zip(answers, copy_outcomes(model, tok, prompt_of, answers, names, rng), strict=True):
        by_len[n].append(ok)
        by_kind[kind(tok, a)].append(ok)
    print(f"\n## Copy: exact greedy copies of {len(answers)} test answers after one reply stating them "
          f"({too_long} longer than a {cap}-token turn left out)\n")
    print("| answer tokens | n | exact |")
    print("|---|---|---|")
    total = [x for v in by_len.values() for x in v]
    buckets: dict[str, list[int]] = defaultdict(list)
    for k, v in by_len.items():
        label = next((f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in _BUCKETS if lo <= k <= hi), "16+")
        buckets[label] += v
    for label in [f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in _BUCKETS] + ["16+"]:
        v = buckets.get(label, [])
        if v:
            print(f"| {label} | {len(v)} | {sum(v) / len(v):.2f} |")
    print(f"| all | {len(total)} | {sum(total) / len(total):.3f} |")
    print("\n| answer kind | n | exact |\n|---|---|---|")
    for group in ("digit", "repeat", "other"):
        v = by_kind.get(group, [])
        if v:
            print(f"| {group} | {len(v)} | {sum(v) / len(v):.3f} |")


if __name__ == "__main__":
    main()
