from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from routerops.candidates.types import QuestionInfo
from routerops.config import load_params
from routerops.policy import ScriptedRouter
from routerops.policy_server import CompletionsPolicy, PolicyServerConfig, PolicyServerError
from routerops.rollout import RolloutLimits, run_episode
from routerops.testing.fakeserver import FakeOpenAIServer, Fault, RequestInfo, closed_port_url
from routerops.tokens import ByteTokenizer

TOK = ByteTokenizer()
ROUTE = ["Qwen2.5-7B-Instruct", "Mixtral-8x22B-Instruct"]
LIMITS = RolloutLimits(max_turns=4, max_tokens_per_turn=256, max_obs_tokens=64, max_prompt_tokens=512,
                       max_context_tokens=2048)
QUESTION = QuestionInfo("q1", "capital of France?", "nq", ("Paris",))
PROMPT = TOK.encode("Question: capital of France?\n")


class Replies:
    """A candidate backend: the first model declines, the second answers."""

    async def call(self, candidate, query, context=None):
        from routerops.candidates.types import CandidateReply

        text = "I do not have enough information to answer that." if candidate.name == ROUTE[0] else "It is Paris."
        return CandidateReply(candidate.name, text, 5, 40, 0.0, 1, False)


def serve_scripted_router(req: RequestInfo) -> str:
    """The router behind the server: the scripted policy, reading the prompt's token ids."""
    context = TOK.decode(req.body["prompt"])
    return ScriptedRouter(TOK, ROUTE).next_turn(context) + " trailing text past the stop"


def policy(url: str, **kw) -> CompletionsPolicy:
    return CompletionsPolicy(PolicyServerConfig(base_url=url, model="router", backoff_base_s=0.01, **kw), TOK)


def episode(gen, pool):
    return asyncio.run(run_episode(QUESTION, PROMPT, generator=gen, tokenizer=TOK, pool=pool, backend=Replies(),
                                   limits=LIMITS))


def test_served_router_plays_the_same_episode_as_in_process(pool) -> None:
    local = episode(ScriptedRouter(TOK, ROUTE), pool)

    async def remote():
        with FakeOpenAIServer(reply=serve_scripted_router) as srv:
            gen = policy(srv.base_url)
            try:
                t = await run_episode(QUESTION, PROMPT, generator=gen, tokenizer=TOK, pool=pool, backend=Replies(),
                                      limits=LIMITS)
            finally:
                await gen.aclose()
            return t, srv.requests, srv.total_requests

    served, requests, total = asyncio.run(remote())
    assert served.response_text == local.response_text and served.answer == "Paris"
    assert served.loss_mask == local.loss_mask and [c.model for c in served.calls] == ROUTE
    # three policy turns: ask Qwen, ask Mixtral, answer; prompts went as token ids (the text
    # endpoint logs no chat messages), and nothing was retried
    assert requests == [("router", [])] * 3 and total == 3


def test_request_body(pool) -> None:
    seen: list[dict] = []

    def reply(req: RequestInfo) -> str:
        seen.append(req.body)
        return "<answer> x</answer>"

    async def go(greedy: bool):
        with FakeOpenAIServer(reply=reply) as srv:
            gen = policy(srv.base_url, greedy=greedy, temperature=0.7, top_p=0.9, seed=5)
            try:
                return await gen.generate([1, 2, 3], max_new_tokens=40, stop=["</answer>"])
            finally:
                await gen.aclose()

    out = asyncio.run(go(greedy=True))
    asyncio.run(go(greedy=False))
    assert TOK.decode(out.token_ids) == "<answer> x</answer>" and out.finish_reason == "stop"
    assert seen[0] == {"model": "router", "prompt": [1, 2, 3], "max_tokens": 40, "stop": ["</answer>"],
                       "include_stop_str_in_output": True, "return_token_ids": True, "seed": 6,
                       "temperature": 0.0, "top_p": 1.0}
    assert (seen[1]["temperature"], seen[1]["top_p"]) == (0.7, 0.9)


def test_server_without_include_stop_str_gets_the_stop_string_back() -> None:
    payload = {"choices": [{"index": 0, "text": "<answer> Paris", "finish_reason": "stop", "stop_reason": "</answer>"}]}

    async def go():
        with FakeOpenAIServer(faults=[Fault.not_completion(payload)]) as srv:
            gen = policy(srv.base_url)
            try:
                return await gen.generate([1], max_new_tokens=32, stop=["</search>", "</answer>"])
            finally:
                await gen.aclose()

    out = asyncio.run(go())
    assert TOK.decode(out.token_ids) == "<answer> Paris</answer>" and out.finish_reason == "stop"


def test_retries_transient_faults_then_succeeds() -> None:
    async def go():
        with FakeOpenAIServer(faults=[Fault.http_status(503), Fault.drop(), None],
                              reply=lambda r: "<answer> ok</answer>") as srv:
            gen = policy(srv.base_url)
            try:
                out = await gen.generate([1], max_new_tokens=32, stop=["</answer>"])
            finally:
                await gen.aclose()
            return out, gen.attempts, (srv.total_requests, srv.completions)

    out, attempts, served = asyncio.run(go())
    assert TOK.decode(out.token_ids) == "<answer> ok</answer>" and out.finish_reason == "stop"
    assert attempts == 3 and served == (3, 1)  # 503, dropped connection, then the reply


_SCRIPTED_400 = '{"error": {"message": "scripted 400", "type": "server_error", "code": null}}'


@pytest.mark.parametrize(("faults", "message", "attempts"), [
    # messages are regular expressions after the "<base_url>/completions: " prefix
    ([Fault.http_status(400)], re.escape(f"HTTP 400: {_SCRIPTED_400}"), 1),
    # half a completion body, which includes a timestamp: only its start is fixed
    ([Fault.malformed_json()], re.escape("""malformed reply: '{"id": "cmpl-fake-0", "object": "text_completion", """)
     + ".*'", 1),
    ([Fault.not_completion({"choices": []})], re.escape("""malformed reply: '{"choices": []}'"""), 1),
    ([Fault.not_completion({"choices": [{"finish_reason": "stop"}]})], re.escape("reply has no choices[0].text"), 1),
    ([Fault.http_status(503)] * 3, re.escape("gave up after 3 attempts (HTTP 503)"), 3),
])
def test_policy_server_faults(faults, message, attempts) -> None:
    async def go():
        with FakeOpenAIServer(faults=faults) as srv:
            gen = policy(srv.base_url, max_attempts=3)
            try:
                with pytest.raises(PolicyServerError) as err:
                    await gen.generate([1], max_new_tokens=8, stop=["</answer>"])
            finally:
                await gen.aclose()
            return str(err.value), srv.base_url, gen.attempts, srv.total_requests

    text, url, sent, served = asyncio.run(go())
    assert re.fullmatch(re.escape(f"{url}/completions: ") + message, text), text
    assert sent == served == attempts  # only the transient 503 is retried


def test_dead_policy_server() -> None:
    url = closed_port_url()

    async def go():
        gen = policy(url, max_attempts=2)
        try:
            await gen.generate([1], max_new_tokens=8, stop=["</answer>"])
        finally:
            await gen.aclose()

    message = f"{url}/completions: gave up after 2 attempts (ConnectError: All connection attempts failed)"
    with pytest.raises(PolicyServerError, match=f"^{re.escape(message)}$"):
        asyncio.run(go())


@pytest.mark.parametrize(("kw", "message"), [
    ({"base_url": "127.0.0.1:8000/v1"}, "policy base_url must be an http(s) URL, got '127.0.0.1:8000/v1'"),
    ({"max_attempts": 0}, "max_attempts must be >= 1"),
    ({"temperature": 0.0}, "temperature must be > 0 and top_p in (0, 1]"),
    ({"top_p": 1.5}, "temperature must be > 0 and top_p in (0, 1]"),
])
def test_bad_config(kw, message) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        PolicyServerConfig(**{"base_url": "http://127.0.0.1:1/v1", "model": "m", **kw})


def test_evaluation_picks_the_profiles_policy(repo_root: Path, tmp_path: Path) -> None:
    from routerops.policy import build_policy

    params = load_params(repo_root / "params.yaml")
    gpu = params.model_copy(update={"profile": "gpu"})
    ep = params.evaluate_router
    missing = f"{tmp_path}: no trained router (config.json missing); run train_router first"
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(missing)}$"):
        build_policy(gpu, tmp_path, environ={})
    router = tmp_path / "router"
    router.mkdir()
    (router / "config.json").write_text("{}")
    unset = ("evaluate_router.policy is 'completions' for profile 'gpu': set ROUTEROPS_ROUTER_BASE_URL "
             "to the router server's base URL (ending in /v1)")
    with pytest.raises(ValueError, match=f"^{re.escape(unset)}$"):
        build_policy(gpu, router, environ={})
    # A policy table without the profile is refused when the params are read, before any stage runs.
    with pytest.raises(ValueError, match=re.escape("policy needs an entry for every profile; missing: gpu")):
        type(ep).model_validate({**ep.model_dump(), "policy": {"local": "transformers"}})


# ----- the server's token ids ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe():
    """The local profile's byte-level BPE tokenizer, trained on a few protocol words."""
    from routerops.training.tiny_policy import train_tokenizer

    return train_tokenizer(["Question: capital of France?", "It is Paris."], 400)


def charwise(tok, text: str) -> list[int]:
    """Text as a policy may emit it: one token per character, a segmentation the BPE's own encoding
    never produces (it merges them), though it decodes to the same text."""
    return [i for ch in text for i in tok.encode(ch, add_special_tokens=False)]


class CharwiseRouter(ScriptedRouter):
    """The scripted router emitting its turns one character per token."""

    async def generate(self, prompt_ids, *, max_new_tokens, stop):
        from routerops.rollout import Generation

        text = self.next_turn(self.tokenizer.decode(prompt_ids, skip_special_tokens=True))
        return Generation(charwise(self.tokenizer, text)[:max_new_tokens], None, "stop")


def bpe_policy(url: str, tok) -> CompletionsPolicy:
    return CompletionsPolicy(PolicyServerConfig(base_url=url, model="router", backoff_base_s=0.01), tok)


async def generate_once(tok, max_new_tokens: int = 256, **server) -> tuple:
    # The fake server counts max_tokens in words; 256 leaves every test turn whole.
    with FakeOpenAIServer(**server) as srv:
        gen = bpe_policy(srv.base_url, tok)
        try:
            out = await gen.generate([1, 2], max_new_tokens=max_new_tokens, stop=["</search>", "</answer>"])
        finally:
            await gen.aclose()
        return out, gen


TURN = "<think>I should ask a model.</think>\n<search>Qwen2.5-7B-Instruct: capital of France?</search>"


def test_the_servers_token_ids_are_kept_even_where_text_does_not_round_trip(bpe) -> None:
    server_ids = charwise(bpe, TURN)
    # the premise: decoding these ids and encoding the text again gives other, fewer ids
    assert bpe.decode(server_ids) == TURN and len(bpe.encode(TURN, add_special_tokens=False)) < len(server_ids)
    out, gen = asyncio.run(generate_once(bpe, reply=lambda r: TURN, tokenize=lambda t: charwise(bpe, t)))
    assert out.token_ids == server_ids and out.finish_reason == "stop"
    assert out.reencoded is False and gen.reencoded == 0


def test_token_ids_beyond_max_tokens_are_cut_there(bpe) -> None:
    # a server that returned more ids than asked for (the fake counts words, not tokens)
    out, _ = asyncio.run(generate_once(bpe, max_new_tokens=20, reply=lambda r: TURN,
                                       tokenize=lambda t: charwise(bpe, t)))
    assert out.token_ids == charwise(bpe, TURN)[:20] and out.finish_reason == "length"


def test_served_episode_equals_in_process_token_for_token(bpe, pool) -> None:
    prompt = bpe.encode("Question: capital of France?\n", add_special_tokens=False)

    async def play(gen):
        return await run_episode(QUESTION, prompt, generator=gen, tokenizer=bpe, pool=pool, backend=Replies(),
                                 limits=LIMITS)

    local = asyncio.run(play(CharwiseRouter(bpe, ROUTE)))

    def serve(req: RequestInfo) -> str:
        return ScriptedRouter(bpe, ROUTE).next_turn(bpe.decode(req.body["prompt"])) + " trailing text past the stop"

    async def remote():
        with FakeOpenAIServer(reply=serve, tokenize=lambda t: charwise(bpe, t)) as srv:
            gen = bpe_policy(srv.base_url, bpe)
            try:
                return await play(gen)
            finally:
                await gen.aclose()

    served = asyncio.run(remote())
    assert served.answer == local.answer == "Paris" and served.turns == local.turns == 3
    assert served.response_ids == local.response_ids and served.loss_mask == local.loss_mask
    assert served.reencoded_turns == 0


def test_server_without_token_ids_is_re_encoded_and_says_so(bpe, pool) -> None:
    # vLLM before return_token_ids (or another server) ignores the flag: the text is all there is
    out, gen = asyncio.run(generate_once(bpe, reply=lambda r: TURN))
    assert out.token_ids == bpe.encode(TURN, add_special_tokens=False)
    assert out.reencoded is True and gen.reencoded == 1

    prompt = bpe.encode("Question: capital of France?\n", add_special_tokens=False)

    async def remote():
        serve = lambda req: ScriptedRouter(bpe, ROUTE).next_turn(bpe.decode(req.body["prompt"]))  # noqa: E731
        with FakeOpenAIServer(reply=serve) as srv:
            gen = bpe_policy(srv.base_url, bpe)
            try:
                t = await run_episode(QUESTION, prompt, generator=gen, tokenizer=bpe, pool=pool, backend=Replies(),
                                      limits=LIMITS)
            finally:
                await gen.aclose()
            return t, gen.reencoded

    t, turns = asyncio.run(remote())
    assert t.answer == "Paris" and t.reencoded_turns == turns == t.turns == 3


@pytest.mark.parametrize(("token_ids", "shown"), [
    ("abc", "'abc'"),
    ({"ids": [1]}, "{'ids': [1]}"),
    ([1, "2"], "[1, '2']"),
    ([1, 2.0], "[1, 2.0]"),
    ([True], "[True]"),
    ([-1], "[-1]"),
    ([*range(100), "x"], repr(list(range(100)))[:200]),  # a long value is quoted only so far
])
def test_malformed_token_ids(bpe, token_ids, shown) -> None:
    payload = {"choices": [{"index": 0, "text": "<answer> x</answer>", "finish_reason": "stop",
                            "token_ids": token_ids}]}

    async def go():
        with FakeOpenAIServer(faults=[Fault.not_completion(payload)]) as srv:
            gen = bpe_policy(srv.base_url, bpe)
            try:
                with pytest.raises(PolicyServerError) as err:
                    await gen.generate([1], max_new_tokens=8, stop=["</answer>"])
            finally:
                await gen.aclose()
            return str(err.value), srv.base_url

    text, url = asyncio.run(go())
    assert text == f"{url}/completions: choices[0].token_ids is not a list of token ids: {shown}"
