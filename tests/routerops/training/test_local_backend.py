from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from routerops.candidates.replay import ReplayPool
from routerops.candidates.types import QuestionInfo
from routerops.config import Params, load_params
from routerops.policy import extract_reply_answer
from routerops.training.local_backend import DELEGATE_QUERY, LocalTrainer, _lr_factor
from routerops.training.tiny_policy import train_tokenizer

QUESTIONS = [QuestionInfo(f"q{i}", f"who wrote the novel number {i} about rivers?", "nq", (f"Author {i}",))
             for i in range(40)]


def _with_local(params: Params, **local: Any) -> Params:
    """`params` with train_router.local's fields in `local` replaced."""
    tp = params.train_router
    return params.model_copy(update={"train_router": tp.model_copy(update={"local": tp.local.model_copy(update=local)})})


@pytest.fixture(scope="module")
def trainer(repo_root: Path, pool, tmp_path_factory) -> LocalTrainer:
    params = _with_local(load_params(repo_root / "params.yaml"), context_drill_tokens=200, drill_real_share=0.25)
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


# A run of one character (`1444`, `Puzzle`, `505,555`; a comma may split a digit run) or a word
# whose first letters come again in the next word (`Bora Bora`, `Fa Faisla`).
_REPEAT = re.compile(r"(\w),?\1|\b(\w+)\W+\2")


def test_repeat_answers_hold_a_repeated_piece_and_make_their_share_of_synthetic_drills(trainer) -> None:
    import random

    rng = random.Random(0)
    repeats = [trainer._repeat_answer(rng) for _ in range(300)]
    assert all(_REPEAT.search(a) for a in repeats), [a for a in repeats if not _REPEAT.search(a)]
    assert len(set(repeats)) > 250  # made up afresh, not drawn from a short list
    assert sum(a.replace(",", "").isdigit() for a in repeats) > 60  # numbers, ~40 %
    # With drill_repeat_share 1 every synthetic answer is one of them; with 0 fewer hold a
    # repeated piece than at 0.25 (the other kinds repeat a character now and then).
    real = {a for q in QUESTIONS for a in q.golden_answers}
    rates = []
    for share in (0.0, 0.25, 1.0):
        params = _with_local(trainer.params, drill_repeat_share=share)
        other = LocalTrainer(params, trainer.pool, QUESTIONS, ReplayPool(None), trainer.ckpt_dir)
        rng = random.Random(1)
        synthetic = [a for a in (other._drill_answer(rng) for _ in range(600)) if a not in real]
        rates.append(sum(bool(_REPEAT.search(a)) for a in synthetic) / len(synthetic))
    assert rates[0] + 0.1 < rates[1] < rates[2] == 1.0


def _spans(mask: list[int]) -> list[tuple[int, int]]:
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
    return spans


def test_context_drills_mask_the_copied_answers_and_the_searches_after_a_decline(trainer, tok) -> None:
    drills = trainer.context_drills(tok, 60)
    prompts = {tuple(trainer._encode(tok, q)) for q in QUESTIONS}
    names = list(trainer.pool.names)
    retries = 0
    for ids, mask in drills:
        assert len(ids) == len(mask)
        assert any(tuple(ids[: len(p)]) == p for p in prompts)  # opens with a real prompt
        spans = _spans(mask)
        answers = []
        for a, b in spans:
            text = tok.decode(ids[a:b])
            before = tok.decode(ids[:a])
            if text.startswith("<think>"):
                # a search after a decline: the model listed after the declined one, never the same
                m = re.fullmatch(r"<think>That did not answer it; I will ask another model\.</think>\n"
                                 r"<search>(.+): (.+)</search>", text)
                declined = re.findall(r"<search>(.+?): ", before)[-1]
                last_reply = before.rsplit("<information>", 1)[1]
                assert m and m.group(2) == DELEGATE_QUERY
                assert m.group(1) == names[(names.index(declined) + 1) % len(names)] != declined
                assert trainer.fallback_model(declined) == m.group(1)
                assert "<answer>" not in last_reply and "." in last_reply  # the reply before it declined
                retries += 1
                continue
            answers.append(b)
            assert text.startswith(" ") and text.endswith("</answer>")
            last_reply = before.rsplit("<information>", 1)[1].split("</information>")[0]
            assert f"{text[:-len('</answer>')]}." in f" {last_reply}"  # copied from the newest reply
            assert before.endswith("<answer>") and "<search>" in before and DELEGATE_QUERY in before
        assert answers
        # grows to a random length up to the cap (200), then stops after the turn that crossed it
        if len(answers) > 1:
            assert answers[-2] < 200
    turns = sum(len(_spans(m)) for _, m in drills) - retries
    assert 0.12 < retries / turns < 0.4  # decline_drill_share = 0.25 of turns
    assert trainer.context_drills(tok, 30, stream="grpo") != drills[:30]  # independent streams


def test_fallback_is_the_next_listed_model_and_the_traces_ask_it_after_a_decline(trainer, tok) -> None:
    names = list(trainer.pool.names)
    assert [trainer.fallback_model(n) for n in names] == names[1:] + names[:1]
    trajs = trainer.synthetic_trajectories(tok, 120)
    firsts = {t.calls[0].model for t in trajs}
    assert len(firsts) >= 5  # the first call still explores the pool
    seconds = [(t.calls[0].model, t.calls[1].model) for t in trajs if len(t.calls) == 2]
    assert seconds and all(b == trainer.fallback_model(a) for a, b in seconds)
    for t in trajs:  # a second call only after a first reply that stated no answer
        assert (len(t.calls) == 2) == (extract_reply_answer(t.calls[0].reply or "") is None)


def test_random_fallback_asks_any_other_model(trainer, tok, pool) -> None:
    other = LocalTrainer(_with_local(trainer.params, fallback="random"), pool, QUESTIONS, ReplayPool(None), trainer.ckpt_dir)
    pairs = [(t.calls[0].model, t.calls[1].model) for t in other.synthetic_trajectories(tok, 200) if len(t.calls) == 2]
    assert pairs and all(a != b for a, b in pairs)
    assert any(b != other.fallback_model(a) for a, b in pairs)  # not only the next listed one


def test_retry_drills_ask_the_next_listed_model_after_a_decline(trainer, tok) -> None:
    names = list(trainer.pool.names)
    drills = trainer.retry_drills(tok, 120)
    declined = []
    for head, tail in drills:
        h, t = tok.decode(head), tok.decode(tail)
        first = re.fullmatch(r"<think>I should ask a model\.</think>\n<search>(.+): (.+)</search>"
                             r"\n\n<information>(.+)</information>\n\n", h, re.DOTALL)
        retry = re.fullmatch(r"<think>That did not answer it; I will ask another model\.</think>\n"
                             r"<search>(.+): (.+)</search>", t)
        assert first and retry and extract_reply_answer(first.group(3)) is None  # the reply declined
        assert retry.group(1) == names[(names.index(first.group(1)) + 1) % len(names)]
        assert first.group(2) == retry.group(2) == DELEGATE_QUERY
        declined.append(first.group(1))
    assert set(declined) == set(names)  # every model is seen declining
    assert trainer.retry_drills(tok, 20) == drills[:20]


@pytest.mark.parametrize(("step", "decay", "factor"), [
    (0, True, 0.1), (9, True, 1.0), (10, True, 1.0), (55, True, 0.55), (100, True, 0.1), (500, True, 0.1),
    (0, False, 0.1), (50, False, 1.0), (100, False, 1.0),
])
def test_lr_factor(step: int, decay: bool, factor: float) -> None:
    assert _lr_factor(100, 10, decay)(step) == pytest.approx(factor)



def test_lm_loss_is_the_mean_cross_entropy_over_the_masked_tokens(trainer, tok) -> None:
    import torch

    from routerops.training.local_backend import _lm_loss, _pack
    from routerops.training.tiny_policy import build_model

    model = build_model(trainer.lp, len(tok), tok.eos_token_id, 0)
    batch = [([], ids, mask) for ids, mask in trainer.context_drills(tok, 4)]
    batch += [(h, t, [1] * len(t)) for h, t in trainer.copy_drills(tok, 4)]
    ids, attn, loss_mask = _pack([b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch],
                                 tok.pad_token_id)
    # The reference: logits at every position, the loss averaged over the masked next tokens.
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    where = loss_mask[:, 1:].bool()
    expected = torch.nn.functional.cross_entropy(logits[where], ids[:, 1:][where])
    got = _lm_loss(model, batch, tok.pad_token_id)
    assert torch.allclose(got, expected, atol=1e-5)
    got.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # No loss token at all: zero, and backward still runs.
    none = _lm_loss(model, [([], batch[0][1], [0] * len(batch[0][1]))], tok.pad_token_id)
    assert float(none.detach()) == 0.0
    none.backward()
