"""Token generators for the rollout: a scripted router and a transformers (CPU) policy.

The scripted router plays a fixed strategy through the same token interface as a learned
policy: it is how the pipeline runs end to end before a router exists, and how tests drive the
rollout with exactly known text. It is not a learned policy and never reports log-probs.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from routerops.config import Params
from routerops.policy_server import CompletionsPolicy, PolicyServerConfig
from routerops.rollout import Generation, TokenGenerator
from routerops.tokens import Tokenizer, decode_text

if TYPE_CHECKING:
    from torch import Tensor
    from transformers import GenerationMixin, PreTrainedModel, PreTrainedTokenizerFast

    class CausalLM(PreTrainedModel, GenerationMixin):
        """A HuggingFace model that generates (Qwen2ForCausalLM for the local policy)."""

__all__ = [
    "ANSWER_THINK",
    "ScriptedRouter",
    "TransformersGenerator",
    "answer_turn",
    "build_policy",
    "extract_reply_answer",
    "hf_generate",
    "load_transformers_policy",
    "search_turn",
]

# What the scripted router thinks before answering; the local SFT traces use the same words.
ANSWER_THINK = "The reply answers it."


def answer_turn(answer: str) -> str:
    """The final turn. `<answer> X</answer>` with a space: byte-level BPE tokenises " X" the way
    it does inside a reply ("... is X."), so a small policy answers by copying tokens; answer
    extraction and SQuAD normalisation ignore the space."""
    return f"<think>{ANSWER_THINK}</think>\n<answer> {answer}</answer>"


def search_turn(model: str, query: str, first: bool = True) -> str:
    """A routing turn as the scripted router (and so the local warm-start traces) writes it."""
    why = "I should ask a model." if first else "That did not answer it; I will ask another model."
    return f"<think>{why}</think>\n<search>{model}: {query}</search>"


_QUESTION_RE = re.compile(r"Question: ([^\n]+)")
_INFO_RE = re.compile(r"<information>(.*?)</information>", re.DOTALL)
_LEADS = re.compile(
    r"^(?:.*?\b(?:the answer is|it is most likely|i believe it is|that would be|it is)\s+)?(.+?)"
    r"(?:\s+is the answer)?\s*\.?$",
    re.IGNORECASE | re.DOTALL,
)
_DECLINE_RE = re.compile(r"\b(not certain|do not have enough|cannot|don't know|not sure)\b", re.IGNORECASE)


def extract_reply_answer(reply: str) -> str | None:
    """A short answer stated in a candidate's one-sentence reply, or None if it declined."""
    reply = reply.strip()
    if not reply or reply == "None" or _DECLINE_RE.search(reply):
        return None
    m = _LEADS.match(reply.split("\n")[0])
    return m.group(1).strip() if m else None


class ScriptedRouter:
    """Asks the models in `route_to` in order until one states an answer, then answers with it.

    With `answer_directly_with` set it answers at once without routing (a no-call baseline).
    """

    def __init__(self, tokenizer: Tokenizer, route_to: Sequence[str] | Callable[[str], Sequence[str]],
                 fallback_answer: str = "unknown", query: str | None = None) -> None:
        """`route_to` is a fixed order, or a function of the question giving its order.

        The sub-question is the question itself, or the fixed `query` (a delegation phrase the
        tiny local policy can learn; candidates then answer the episode's question only in the
        replay pool, which keys correctness on it).
        """
        if not callable(route_to) and not route_to:
            raise ValueError("route_to needs at least one model name")
        self.tokenizer = tokenizer
        self.route_to = route_to
        self.fallback_answer = fallback_answer
        self.query = query

    def next_turn(self, context: str) -> str:
        qm = list(_QUESTION_RE.finditer(context))
        question = qm[-1].group(1).strip() if qm else "the question"
        tail = context[qm[-1].end():] if qm else context
        replies = [r.strip() for r in _INFO_RE.findall(tail)]
        for reply in reversed(replies):
            ans = extract_reply_answer(reply)
            if ans:
                return answer_turn(ans)
        order = list(self.route_to(question) if callable(self.route_to) else self.route_to)
        if len(replies) < len(order):
            return search_turn(order[len(replies)], self.query or question, first=not replies)
        return f"<think>No model could answer.</think>\n<answer> {self.fallback_answer}</answer>"

    async def generate(self, prompt_ids: list[int], *, max_new_tokens: int, stop: Sequence[str]) -> Generation:
        text = self.next_turn(decode_text(self.tokenizer, prompt_ids))
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        finish: Literal["stop", "length"] = "stop" if len(ids) <= max_new_tokens else "length"
        return Generation(ids[:max_new_tokens], None, finish)


def hf_generate(model: CausalLM, tokenizer: PreTrainedTokenizerFast, ids: Tensor, mask: Tensor, *,
                max_new_tokens: int, greedy: bool, temperature: float, top_p: float, stop: Sequence[str],
                pad_token_id: int | None) -> tuple[Tensor, Tensor]:
    """One `generate` call over a left-padded batch: the new token ids (batch, steps) and their
    log-probs under the sampling distribution at `temperature` before top-p, the quantity an RL
    learner recomputes (greedy: temperature 1)."""
    import torch
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    # transformers types `generate`'s self with a Protocol written for another checker (ty).
    out = model.generate(  # type: ignore[misc]
        input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=not greedy,
        temperature=None if greedy else temperature, top_p=None if greedy else top_p, top_k=None,
        stop_strings=list(stop) or None, tokenizer=tokenizer, output_logits=True, return_dict_in_generate=True,
        pad_token_id=pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if not isinstance(out, GenerateDecoderOnlyOutput) or out.logits is None:
        raise TypeError(f"generate returned {type(out).__name__} without logits; expected a decoder-only output")
    # (steps, batch, vocab) -> log-probs of the chosen tokens, (batch, steps)
    logits = torch.stack(out.logits, dim=0).float() / (1.0 if greedy else temperature)
    new = out.sequences[:, ids.shape[1]:]
    chosen = torch.log_softmax(logits, dim=-1).gather(-1, new.T.unsqueeze(-1)).squeeze(-1).T
    return new, chosen


class TransformersGenerator:
    """A HuggingFace causal LM on CPU, one request at a time (`hf_generate` gives the log-probs)."""

    def __init__(self, model: CausalLM, tokenizer: PreTrainedTokenizerFast, *, greedy: bool = False,
                 temperature: float = 1.0, top_p: float = 0.95, seed: int = 0) -> None:
        import torch

        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError("temperature must be > 0 and top_p in (0, 1]")
        self.model, self.tokenizer = model, tokenizer
        self.greedy, self.temperature, self.top_p = greedy, temperature, top_p
        self._torch = torch
        self._rng = torch.Generator().manual_seed(seed)
        # generate() is not re-entrant and both cores are already used by one call on CPU.
        self._lock = threading.Lock()

    async def generate(self, prompt_ids: list[int], *, max_new_tokens: int, stop: Sequence[str]) -> Generation:
        return await asyncio.to_thread(self._generate, prompt_ids, max_new_tokens, list(stop))

    def _generate(self, prompt_ids: list[int], max_new_tokens: int, stop: list[str]) -> Generation:
        torch = self._torch
        with self._lock, torch.no_grad():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self._rng)))
            inp = torch.tensor([prompt_ids], dtype=torch.long)
            ids, lps = hf_generate(self.model, self.tokenizer, inp, torch.ones_like(inp),
                                   max_new_tokens=max_new_tokens, greedy=self.greedy, temperature=self.temperature,
                                   top_p=self.top_p, stop=stop,
                                   pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        new: list[int] = ids[0].tolist()
        logprobs: list[float] = lps[0].tolist()
        eos = self.tokenizer.eos_token_id
        text = decode_text(self.tokenizer, new)
        finish: Literal["stop", "length", "eos"]
        if new and eos is not None and new[-1] == eos:
            finish = "eos"
        elif any(s in text for s in stop):
            finish = "stop"
        else:
            finish = "length"
        return Generation(new, logprobs, finish)


def load_transformers_policy(path: str | Path, **kwargs: Any) -> TransformersGenerator:
    """Load a local HuggingFace model directory (never the hub) as a generator."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p}: not a HuggingFace model directory (no config.json)")
    tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True)
    model.eval()
    return TransformersGenerator(cast("CausalLM", model), cast("PreTrainedTokenizerFast", tok), **kwargs)


def build_policy(params: Params, router_dir: Path, environ: Mapping[str, str] | None = None
                 ) -> tuple[TokenGenerator, Tokenizer, CompletionsPolicy | None]:
    """(generator, tokenizer, client to close) for the profile's policy backend
    (`evaluate_router.policy`): the router directory in this process, or a completions server.
    Evaluation and the service both run the router through this."""
    from transformers import AutoTokenizer

    ep = params.evaluate_router
    kind = ep.policy[params.profile]
    if not (router_dir / "config.json").is_file():
        raise FileNotFoundError(f"{router_dir}: no trained router (config.json missing); run train_router first")
    greedy = ep.decoding == "greedy"
    if kind == "transformers":
        import torch

        from routerops.training.tiny_policy import BatchedGenerator, load_policy

        torch.manual_seed(ep.seed)
        model, hf_tok = load_policy(router_dir)
        return (BatchedGenerator(model, hf_tok, greedy=greedy, temperature=ep.temperature, top_p=ep.top_p,
                                 max_batch=ep.concurrency), hf_tok, None)
    env = os.environ if environ is None else environ
    base_url = env.get(ep.policy_base_url_env, "")
    if not base_url:
        raise ValueError(f"evaluate_router.policy is 'completions' for profile {params.profile!r}: set "
                         f"{ep.policy_base_url_env} to the router server's base URL (ending in /v1)")
    tok: Tokenizer = AutoTokenizer.from_pretrained(router_dir, local_files_only=True)
    client = CompletionsPolicy(PolicyServerConfig(
        base_url=base_url, model=ep.policy_model or str(router_dir), api_key=env.get(ep.policy_api_key_env) or None,
        greedy=greedy, temperature=ep.temperature, top_p=ep.top_p, seed=ep.seed,
        max_connections=ep.concurrency), tok)
    return client, tok, client
