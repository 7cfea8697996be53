from __future__ import annotations

import asyncio

import pytest

from routerops.candidates.types import CandidateReply, QuestionInfo
from routerops.policy import ScriptedRouter, TransformersGenerator, extract_reply_answer, load_transformers_policy
from routerops.rollout import RolloutLimits, run_episode
from routerops.tokens import ByteTokenizer


@pytest.mark.parametrize(("reply", "answer"), [
    ("The answer is Ben Gibbard.", "Ben Gibbard"),
    ("It is most likely 1995.", "1995"),
    ("Paris is the answer.", "Paris"),
    ("I do not have enough information to answer that.", None),
    ("None", None),
    ("", None),
])
def test_extract_reply_answer(reply: str, answer: str | None) -> None:
    assert extract_reply_answer(reply) == answer


def test_scripted_router_escalates_then_answers() -> None:
    r = ScriptedRouter(ByteTokenizer(), ["A", "B"], fallback_answer="dunno")
    ctx = "Question: who?\n"
    assert r.next_turn(ctx).endswith("<search>A: who?</search>")
    ctx += "<search>A: who?</search>\n\n<information>I do not have enough information to answer that.</information>\n\n"
    assert r.next_turn(ctx).endswith("<search>B: who?</search>")
    ctx += "<search>B: who?</search>\n\n<information>None</information>\n\n"
    assert r.next_turn(ctx).endswith("<answer> dunno</answer>")
    with pytest.raises(ValueError):
        ScriptedRouter(ByteTokenizer(), [])


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    """A real Qwen2-architecture LM with a byte-level BPE tokenizer, built offline, untrained."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["<think>reason</think><search>Qwen2.5-7B-Instruct: who?</search><answer>Paris</answer>"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=hf_tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id)
    path = tmp_path_factory.mktemp("tiny")
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path


def test_transformers_generator_returns_ids_and_logprobs(tiny_policy) -> None:
    gen = load_transformers_policy(tiny_policy, temperature=1.0, top_p=0.95, seed=3)
    prompt = gen.tokenizer.encode("<think>", add_special_tokens=False)
    out = asyncio.run(gen.generate(prompt, max_new_tokens=12, stop=["</answer>"]))
    assert 1 <= len(out.token_ids) <= 12 and len(out.logprobs) == len(out.token_ids)
    assert all(lp <= 0.0 for lp in out.logprobs)
    again = asyncio.run(load_transformers_policy(tiny_policy, seed=3).generate(prompt, max_new_tokens=12,
                                                                                stop=["</answer>"]))
    assert again == out  # same seed, same tokens and log-probs


def test_transformers_policy_runs_a_full_episode(tiny_policy, pool) -> None:
    gen = load_transformers_policy(tiny_policy, greedy=True)

    class NoCalls:
        async def call(self, candidate, query, context=None):
            return CandidateReply(candidate.name, "It is Paris.", 5, 5, 0.0)

    prompt = gen.tokenizer.encode("Question: who?\n", add_special_tokens=False)
    limits = RolloutLimits(max_turns=1, max_tokens_per_turn=8, max_obs_tokens=8, max_prompt_tokens=64,
                           max_context_tokens=128)
    t = asyncio.run(run_episode(QuestionInfo("q", "who?"), prompt, generator=gen, tokenizer=gen.tokenizer,
                                pool=pool, backend=NoCalls(), limits=limits))
    assert len(t.response_ids) == len(t.loss_mask) == len(t.logprobs) > 0
    assert t.loss_mask[0] == 1 and t.turns >= 1


def test_load_policy_rejects_non_model_dirs(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a HuggingFace model directory"):
        load_transformers_policy(tmp_path)
    with pytest.raises(ValueError, match="temperature"):
        TransformersGenerator(object(), object(), temperature=0.0)
