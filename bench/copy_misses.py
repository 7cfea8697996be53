"""The router's missed copies: episodes where a reply stated a gold alias and the router's answer is
not exactly it, read from an evaluation's trajectories (no calls, no training).

For each miss: the answer the last stating reply gave, what the router wrote, whether the format
was valid, and the stated answer's length in the router's tokens. Counted apart: misses of answers
holding a digit (the local tokenizer splits numbers digit by digit) and answers longer than the
answer turn can hold (`train_router.local.max_tokens_per_turn` less the turn's frame).

Usage: python bench/copy_misses.py [--evaluation artifacts/evaluation] [--router artifacts/router]
Needs an evaluation's output and the router it evaluated (`make demo` writes both).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, without installing

from routerops.behaviour import information_blocks
from routerops.config import load_params
from routerops.evaluation import contains_gold, read_records
from routerops.paths import project_root
from routerops.policy import answer_turn, extract_reply_answer


def main() -> None:
    from transformers import AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evaluation", type=Path, default=None,
                    help="evaluation folder (default: evaluate_router.out_dir)")
    ap.add_argument("--router", type=Path, default=None, help="router folder (default: train_router.out_dir)")
    args = ap.parse_args()
    root = project_root()
    params = load_params(root / "params.yaml")
    path = (args.evaluation or root / params.evaluate_router.out_dir) / "trajectories.parquet"
    router = args.router or root / params.train_router.out_dir
    if not path.is_file() or not (router / "tokenizer.json").is_file():
        sys.exit(f"need {path} and a router at {router}: run `make demo` first")
    tok = AutoTokenizer.from_pretrained(router, local_files_only=True)

    def length(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False))

    room = params.train_router.local.max_tokens_per_turn - (length(answer_turn("a")) - length(" a"))
    stated_gold, misses = 0, []
    for r in read_records(path):
        if r.system != "router":
            continue
        blocks = information_blocks(r.response)
        if not any(contains_gold(b, r.golden_answers) for b in blocks):
            continue
        stated_gold += 1
        if r.em:
            continue
        stated = [a for a in (extract_reply_answer(b) for b in blocks) if a]
        want = stated[-1] if stated else ""
        misses.append((want, r.answer or "", r.format_valid, length(f" {want}")))
    print(f"## {len(misses)} missed copies of {stated_gold} (answer turn room: {room} tokens)\n")
    print("| stated | written | format valid | tokens |")
    print("|---|---|---|---|")
    for want, got, valid, n in sorted(misses, key=lambda m: m[3]):
        print(f"| {want[:60]!r} | {got[:60]!r} | {valid} | {n} |")
    digits = sum(1 for want, _, _, n in misses if any(c.isdigit() for c in want) and n <= room)
    long = sum(1 for *_, n in misses if n > room)
    print(f"\nwith a digit (and short enough): {digits}; longer than the turn holds: {long}")


if __name__ == "__main__":
    main()
