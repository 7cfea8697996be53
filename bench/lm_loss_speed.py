"""Time one supervised warm-start step with the output layer on every position against on the
loss positions only (`local_backend._lm_loss`), on the warm start's own batches; prints a table.

Usage: python bench/lm_loss_speed.py [--steps 20] [--router checkpoints/train_router/sft]
Needs the dataset stage's output (artifacts/dataset) and data/ (`make demo` builds both).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, without installing

import torch

from routerops.config import load_params
from routerops.paths import project_root
from routerops.pool import load_pool
from routerops.rl_dataset import read_questions
from routerops.runtime import replay_pool
from routerops.training.local_backend import LocalTrainer, _lm_loss, _pack
from routerops.training.tiny_policy import load_policy

if TYPE_CHECKING:
    from routerops.policy import CausalLM

Row = tuple[Sequence[int], Sequence[int], Sequence[int]]  # (prompt, response, loss mask)
Batch = Sequence[Row]


def full_logits_loss(model: CausalLM, batch: Batch, pad: int) -> torch.Tensor:
    """The loss as computed before: logits at every position, then the masked mean."""
    ids, attn, labels_mask = _pack([b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch], pad)
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    mask = labels_mask[:, 1:].float()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1),
                                            reduction="none").view_as(mask)
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def step_ms(model: CausalLM, batches: Sequence[Batch], pad: int,
            loss_fn: Callable[[CausalLM, Batch, int], torch.Tensor]) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn(model, batches[0], pad).backward()  # warm-up
    opt.zero_grad()
    t = time.perf_counter()
    for b in batches:
        loss = loss_fn(model, b, pad)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t) / len(batches) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--router", type=Path, default=None, help="policy directory (default: the demo's warm start)")
    args = ap.parse_args()
    root = project_root()
    params = load_params(root / "params.yaml")
    questions = read_questions(root / params.build_dataset.out_dir, "train")
    trainer = LocalTrainer(params, load_pool(root / "pool.yaml"), questions,
                           replay_pool(params.candidates, root / "data", questions), Path(tempfile.mkdtemp()))
    model, tok = load_policy(args.router or root / params.train_router.checkpoint_dir / "sft")
    model.train()
    lp, n = trainer.lp, args.steps
    drills: list[Row] = [(h, t, [1] * len(t)) for h, t in trainer.copy_drills(tok, lp.drill_batch_size * n)]
    context: list[Row] = [([], ids, m) for ids, m in trainer.context_drills(tok, lp.sft_batch_size * n)]
    phases = {"copy drills": (drills, lp.drill_batch_size), "context drills": (context, lp.sft_batch_size)}
    print(f"## One warm-start step, mean of {n} ({torch.get_num_threads()} torch threads)\n")
    print("| phase | batch | ms, output layer on every position | ms, on the loss positions only |")
    print("|---|---|---|---|")
    for name, (data, bs) in phases.items():
        batches = [data[i:i + bs] for i in range(0, len(data), bs)]
        full = step_ms(model, batches, tok.pad_token_id, full_logits_loss)
        masked = step_ms(model, batches, tok.pad_token_id, _lm_loss)
        print(f"| {name} | {bs} | {full:.0f} | {masked:.0f} |")


if __name__ == "__main__":
    main()
