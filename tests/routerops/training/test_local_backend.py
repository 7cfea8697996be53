from __future__ import annotations

import re
from pathlib import Path

import pytest

from routerops.candidates.replay import ReplayPool
from routerops.candidates.types import QuestionInfo
from routerops.config import load_params
from routerops.training.local_backend import DELEGATE_QUERY, LocalTrainer, _lr_factor
from routerops.training.tiny_policy import train_tokenizer

QUESTIONS = [QuestionInfo(f"q{i}", f"who wrote the novel number {i} about rivers?", "nq", (f"Author {i}",))
             for i in range(40)]


@pytest.fixture(scope="module")
def trainer(repo_root: Path, pool, tmp_path_factory) -> LocalTrainer:
    params = load_params(repo_root / "params.yaml")
    tp = params.train_router
    params = params.model_copy(update={"train_router": tp.model_copy(update={
        "local": tp.local.model_copy(update={"context_drill_tokens": 200, "drill_real_share": 0.25})})})
    return LocalTrainer(params, pool, QUESTIONS, ReplayPool(None), tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def tok(trainer):
    texts = [m["content"] for q in QUESTIONS for m in trainer._messages(q)] + [q.golden_answers[0] for q in QUESTIONS]
    return train_tokenizer(texts, 400)


def test_copy_drills_copy_the_reply_and_are_mostly_synthetic(trainer, tok) -> None:
    drills = trainer.copy_drills(tok, 400)
    real = 0
    for head, tail in drills:
        h, t = tok.decode(head), tok.decode(tail)
        m = re.fullmatch(r"<think>The reply answers it\.</think>\n<answer> (.+)</answer>", t, re.DOTALL)
        assert h.startswith("\n\n<information>") and h.endswith("</information>\n\n") and m
        assert f" {m.group(1)}." in h  # the reply states exactly the answer the turn gives
        real += m.group(1) in {q.golden_answers[0] for q in QUESTIONS}
    # drill_real_share = 0.25: the rest are synthetic, so the model cannot just memorise answers
    assert 0.15 < real / len(drills) < 0.35
    assert trainer.copy_drills(tok, 50) == drills[:50]  # deterministic in the seed


def test_context_drills_mask_exactly_the_copied_answers(trainer, tok) -> None:
    drills = trainer.context_drills(tok, 30)
    prompts = {tuple(trainer._encode(tok, q)) for q in QUESTIONS}
    for ids, mask in drills:
        assert len(ids) == len(mask)
        assert any(tuple(ids[: len(p)]) == p for p in prompts)  # opens with a real prompt
        spans, i = [], 0
        while i < len(mask):
            if mask[i]:
                j = i
                while j < len(mask) and mask[j]:
                    j += 1
                spans.append((i, j))
                i = j
            else:
                i += 1
        assert len(spans) >= 1
        for a, b in spans:
            answer = tok.decode(ids[a:b])
            before = tok.decode(ids[:a])
            assert answer.startswith(" ") and answer.endswith("</answer>")
            last_reply = before.rsplit("<information>", 1)[1].split("</information>")[0]
            assert f"{answer[:-len('</answer>')]}." in f" {last_reply}"  # copied from the newest reply
            assert before.endswith("<answer>") and "<search>" in before and DELEGATE_QUERY in before
        # grows to a random length up to the cap (200), then stops after the turn that crossed it
        if len(spans) > 1:
            assert spans[-2][1] < 200
    assert trainer.context_drills(tok, 30, stream="grpo") != drills  # independent streams


@pytest.mark.parametrize(("step", "decay", "factor"), [
    (0, True, 0.1), (9, True, 1.0), (10, True, 1.0), (55, True, 0.55), (100, True, 0.1), (500, True, 0.1),
    (0, False, 0.1), (50, False, 1.0), (100, False, 1.0),
])
def test_lr_factor(step: int, decay: bool, factor: float) -> None:
    assert _lr_factor(100, 10, decay)(step) == pytest.approx(factor)
