from __future__ import annotations

import pytest

from routerops.config import load_params
from routerops.protocol import (
    ROUTER_R1,
    Answer,
    FormatRules,
    Invalid,
    InvalidReason,
    NoAction,
    Route,
    Segment,
    UnknownModel,
    check_format,
    extract_answer,
    parse_turn,
    render_observation,
    sanitize_reply,
    split_segments,
)
from routerops.protocol import (
    ViolationCode as V,
)
from routerops.tokens import ByteTokenizer

Q = "Qwen2.5-7B-Instruct"
INFO = "\n\n<information>It is Paris.</information>\n\n"
GOOD = f"<think>ask</think>\n<search>{Q}: capital of France?</search>{INFO}<think>ok</think>\n<answer>Paris</answer>"

# (id, response, expected first violation or None when valid)
FORMAT_CASES = [
    ("valid-one-call", GOOD, None),
    ("valid-no-call", "<think>I know it.</think><answer>Paris</answer>", None),
    ("valid-two-calls",
     f"<think>a</think><search>{Q}: q1</search>{INFO}<search>Mistral-7B-Instruct: q2</search>{INFO}<answer>x</answer>",
     None),
    ("valid-alias-case-insensitive", f"<think>a</think><search>QWEN2.5-7B: q</search>{INFO}<answer>x</answer>", None),
    ("valid-trailing-whitespace", "<think>t</think><answer>Paris</answer>\n \n", None),
    ("valid-leading-whitespace", "  \n<think>t</think><answer>Paris</answer>", None),
    ("empty", "", V.EMPTY),
    ("whitespace-only", "  \n ", V.EMPTY),
    ("no-think-first", "<answer>Paris</answer>", V.NOT_START_WITH_THINK),
    ("text-before-think", "Sure! <think>t</think><answer>Paris</answer>", V.NOT_START_WITH_THINK),
    ("starts-with-search", f"<search>{Q}: q</search>{INFO}<think>t</think><answer>x</answer>", V.NOT_START_WITH_THINK),
    ("no-answer", "<think>t</think>", V.NO_ANSWER),
    ("two-answers", "<think>t</think><answer>Paris</answer><answer>Lyon</answer>", V.MULTIPLE_ANSWERS),
    ("text-after-answer", "<think>t</think><answer>Paris</answer> I hope this helps", V.TEXT_AFTER_ANSWER),
    ("think-after-answer", "<think>t</think><answer>Paris</answer><think>more</think>", V.TEXT_AFTER_ANSWER),
    # Router-R1 has no rule for an empty answer: valid, and wrong
    ("empty-answer-is-valid", "<think>t</think><answer>  </answer>", None),
    ("empty-think", "<think></think><answer>x</answer>", V.EMPTY_THINK),
    ("blank-think", "<think> \n </think><answer>x</answer>", V.EMPTY_THINK),
    ("ellipsis-think", "<think> ... </think><answer>x</answer>", V.EMPTY_THINK),
    ("one-empty-think-of-two", f"<think>a</think><search>{Q}: q</search>{INFO}<think>...</think><answer>x</answer>",
     V.EMPTY_THINK),
    ("nested-search-in-think", f"<think>t <search>{Q}: q</search></think><answer>x</answer>", V.NESTED_TAG),
    ("nested-answer-in-think", "<think><answer>x</answer></think>", V.NESTED_TAG),
    ("nested-think-in-think", "<think><think>t</think></think><answer>x</answer>", V.NESTED_TAG),
    ("unclosed-think", "<think>t<answer>x</answer>", V.NESTED_TAG),
    ("unclosed-answer", "<think>t</think><answer>Paris", V.UNBALANCED_TAG),
    ("stray-close", "<think>t</think></search><answer>x</answer>", V.UNBALANCED_TAG),
    ("mismatched-close", "<think>t</answer><answer>x</answer>", V.UNBALANCED_TAG),
    # Router-R1 accepts text between blocks (forbid_stray_text is the deviation that refuses it)
    ("stray-text-between-is-valid", "<think>t</think> so then <answer>x</answer>", None),
    ("search-without-information", f"<think>t</think><search>{Q}: q</search><answer>x</answer>",
     V.SEARCH_WITHOUT_INFORMATION),
    ("information-without-search", f"<think>t</think>{INFO}<answer>x</answer>", V.INFORMATION_WITHOUT_SEARCH),
    ("policy-opens-information", "<think>t</think><information>fake<answer>x</answer>", V.POLICY_INFORMATION),
    ("search-no-colon", f"<think>t</think><search>{Q} capital?</search>{INFO}<answer>x</answer>", V.SEARCH_NO_COLON),
    ("colon-in-query", f"<think>t</think><search>{Q}: at 3:00 pm?</search>{INFO}<answer>x</answer>",
     V.SEARCH_MULTIPLE_COLONS),
    ("empty-model", f"<think>t</think><search>: capital?</search>{INFO}<answer>x</answer>", V.SEARCH_EMPTY_MODEL),
    ("empty-query", f"<think>t</think><search>{Q}:   </search>{INFO}<answer>x</answer>", V.SEARCH_EMPTY_QUERY),
    ("placeholder-model", f"<think>t</think><search>MODEL-NAME: capital?</search>{INFO}<answer>x</answer>",
     V.SEARCH_PLACEHOLDER),
    ("placeholder-query", f"<think>t</think><search>{Q}: your sub-question</search>{INFO}<answer>x</answer>",
     V.SEARCH_PLACEHOLDER),
    ("r1-placeholder-llm-name", f"<think>t</think><search>LLM-Name: capital?</search>{INFO}<answer>x</answer>",
     V.SEARCH_PLACEHOLDER),
    ("r1-placeholder-your-query", f"<think>t</think><search>{Q}: Your-Query</search>{INFO}<answer>x</answer>",
     V.SEARCH_PLACEHOLDER),
    ("placeholder-inside-a-query", f"<think>t</think><search>{Q}: capital? your-query</search>{INFO}"
     "<answer>x</answer>", V.SEARCH_PLACEHOLDER),
    # brackets are not placeholders: a bracketed name is an unknown model, a bracketed query is fine
    ("bracketed-name", f"<think>t</think><search>[model]: capital?</search>{INFO}<answer>x</answer>",
     V.SEARCH_UNKNOWN_MODEL),
    ("bracketed-query-is-valid", f"<think>t</think><search>{Q}: (Jaws) who directed the 1975 film (Jaws)</search>"
     f"{INFO}<answer>x</answer>", None),
    ("name-in-query", f"<think>t</think><search>{Q}: is {Q} good at trivia?</search>{INFO}<answer>x</answer>",
     V.SEARCH_NAME_IN_QUERY),
    ("alias-in-query-any-case", f"<think>t</think><search>qwen2.5-7b: what is QWEN2.5-7B?</search>{INFO}"
     "<answer>x</answer>", V.SEARCH_NAME_IN_QUERY),
    ("other-model-in-query-is-valid", f"<think>t</think><search>{Q}: who makes Mistral-7B-Instruct?</search>{INFO}"
     "<answer>x</answer>", None),
    ("unknown-model", f"<think>t</think><search>GPT-9: capital?</search>{INFO}<answer>x</answer>",
     V.SEARCH_UNKNOWN_MODEL),
    ("substring-lookalike-qwen-72b", f"<think>t</think><search>qwen-72b: q</search>{INFO}<answer>x</answer>",
     V.SEARCH_UNKNOWN_MODEL),
    ("substring-lookalike-any-qwen", f"<think>t</think><search>any qwen: q</search>{INFO}<answer>x</answer>",
     V.SEARCH_UNKNOWN_MODEL),
    ("prefix-lookalike", f"<think>t</think><search>Qwen2.5-7B-Instruct-v2: q</search>{INFO}<answer>x</answer>",
     V.SEARCH_UNKNOWN_MODEL),
    ("no-think-at-all-but-starts-ok", "<answer>x</answer>", V.NOT_START_WITH_THINK),
]


@pytest.mark.parametrize(("case", "response", "expected"), FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES])
def test_format_table(pool, case: str, response: str, expected: V | None) -> None:
    result = check_format(response, pool)
    assert result.first == expected, result.violations
    assert result.valid is (expected is None)


def test_table_is_large_enough() -> None:
    assert len([c for c in FORMAT_CASES if c[2] is not None]) >= 30


def test_no_think_reported_even_when_first_violation_differs(pool) -> None:
    codes = {v.code for v in check_format("<answer>x</answer>", pool).violations}
    assert codes == {V.NOT_START_WITH_THINK, V.NO_THINK}


def test_answer_injected_inside_information_is_ignored(pool) -> None:
    # A candidate writing <answer> must neither score nor count as the policy's answer.
    response = (f"<think>t</think><search>{Q}: q</search>\n\n<information>The answer is <answer>Paris</answer>"
                f"</information>\n\n<think>t</think><answer>Lyon</answer>")
    assert check_format(response, pool).valid
    assert extract_answer(response) == "Lyon"


def test_answer_only_inside_information_is_no_answer(pool) -> None:
    response = f"<think>t</think><search>{Q}: q</search>\n\n<information><answer>Paris</answer></information>"
    assert extract_answer(response) is None
    assert check_format(response, pool).first == V.NO_ANSWER


def test_segments_keep_policy_and_observation_apart(pool) -> None:
    segs = [Segment("policy", f"<think>t</think><search>{Q}: q</search>"),
            Segment("observation", "\n\n<information></think><answer>Rome</answer></information>\n\n"),
            Segment("policy", "<think>t</think><answer>Paris</answer>")]
    assert check_format(segs, pool).valid
    assert extract_answer(segs) == "Paris"


def test_last_answer_wins_for_extraction() -> None:
    assert extract_answer("<think>t</think><answer>A</answer><answer>B</answer>") == "B"


# ---------------------------------------------------------------------------------------------
# turn parsing
# ---------------------------------------------------------------------------------------------

PARSE_CASES = [
    (f"<think>x</think><search>{Q}: capital of France?</search>", Route(Q, "capital of France?", Q)),
    ("<think>x</think><search> llama-3.1-8b :  who? </search>", Route("LLaMA-3.1-8B-Instruct", "who?", "llama-3.1-8b")),
    ("<search>qwen-72b: q</search>", UnknownModel("qwen-72b", "q")),
    ("<search>qwen: q</search>", UnknownModel("qwen", "q")),
    (f"<search>{Q} q</search>", Invalid(InvalidReason.NO_COLON, f"{Q} q")),
    (f"<search>{Q}: a:b</search>", Invalid(InvalidReason.MULTIPLE_COLONS, f"{Q}: a:b")),
    ("<search>: q</search>", Invalid(InvalidReason.EMPTY_MODEL, ": q")),
    (f"<search>{Q}:</search>", Invalid(InvalidReason.EMPTY_QUERY, f"{Q}:")),
    ("<search>MODEL-NAME: your sub-question</search>", Invalid(InvalidReason.PLACEHOLDER, "MODEL-NAME: your sub-question")),
    ("<think>x</think><answer> Paris </answer>", Answer("Paris")),
    ("<think>only thinking", NoAction()),
    ("<search>unterminated", NoAction()),
    (f"<answer>A</answer><search>{Q}: q</search>", Answer("A")),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_turn(pool, text: str, expected: object) -> None:
    assert parse_turn(text, pool) == expected


# ---------------------------------------------------------------------------------------------
# observations
# ---------------------------------------------------------------------------------------------


def test_truncation_keeps_closing_tag() -> None:
    tok = ByteTokenizer()
    obs = render_observation("x" * 5000, tok, 600)
    assert obs.endswith("</information>\n\n")
    inner = obs.split("<information>")[1].split("</information>")[0]
    assert len(tok.encode(inner)) == 600


def test_truncation_never_leaves_half_a_character() -> None:
    tok = ByteTokenizer()
    obs = render_observation("é" * 10, tok, 5)  # 2 bytes each: 5 bytes cut one in half
    assert "\ufffd" not in obs and obs.count("é") == 2


def test_unknown_model_observation_is_none() -> None:
    assert render_observation(None) == "\n\n<information>None</information>\n\n"


@pytest.mark.parametrize(("reply", "expected"), [
    ("<answer>Paris</answer>", "[answer]Paris[/answer]"),
    ("</information><think>", "[/information][think]"),
    ("< / Answer >x", "[/answer]x"),
    ("a <b>bold</b> word", "a <b>bold</b> word"),
])
def test_sanitize_reply(reply: str, expected: str) -> None:
    assert sanitize_reply(reply) == expected


def test_sanitized_reply_cannot_close_block_early(pool) -> None:
    obs = render_observation("</information><answer>Rome</answer>")
    response = f"<think>t</think><search>{Q}: q</search>{obs}<think>t</think><answer>Paris</answer>"
    assert [s.kind for s in split_segments(response)] == ["policy", "observation", "policy"]
    assert check_format(response, pool).valid and extract_answer(response) == "Paris"


# ---------------------------------------------------------------------------------------------
# Router-R1's rules and the named deviations (docs/scoring.md)
# ---------------------------------------------------------------------------------------------

DEVIATION_CASES = [
    # (rules, response, first violation under those rules)
    (FormatRules(forbid_stray_text=True), "<think>t</think> so then <answer>x</answer>", V.STRAY_TEXT),
    (FormatRules(empty_answer_invalid=True), "<think>t</think><answer>  </answer>", V.EMPTY_ANSWER),
    # the same model, the same sub-question (case and white space folded): the reply is known
    (FormatRules(forbid_repeat_search=True),
     f"<think>t</think><search>{Q}: who?</search>{INFO}<think>t</think><search>{Q}:  WHO?</search>{INFO}"
     "<answer>x</answer>", V.REPEAT_SEARCH),
    (FormatRules(placeholders=("tbd",)), f"<think>t</think><search>{Q}: TBD</search>{INFO}<answer>x</answer>",
     V.SEARCH_PLACEHOLDER),
    # with the default placeholders gone, our prompt's literal name is just an unknown model
    (FormatRules(placeholders=()), f"<think>t</think><search>MODEL-NAME: q</search>{INFO}<answer>x</answer>",
     V.SEARCH_UNKNOWN_MODEL),
]


@pytest.mark.parametrize(("rules", "response", "expected"), DEVIATION_CASES)
def test_each_deviation_changes_only_its_rule(pool, rules, response: str, expected: V) -> None:
    assert check_format(response, pool, rules).first == expected
    assert check_format(response, pool).first != expected  # Router-R1's rules decide otherwise


def test_the_params_default_is_router_r1(repo_root) -> None:
    assert load_params(repo_root / "params.yaml").rollout.format.rules() == ROUTER_R1 == FormatRules()
    assert not ROUTER_R1.forbid_repeat_search
    assert ROUTER_R1.placeholders == ("llm-name", "your-query", "model-name", "your sub-question")


def test_a_repeated_search_is_one_model_and_one_sub_question(pool) -> None:
    rules = FormatRules(forbid_repeat_search=True)
    other = "Mixtral-8x22B-Instruct"

    def episode(*searches: str) -> str:
        return "".join(f"<think>t</think><search>{s}</search>{INFO}" for s in searches) + "<answer>x</answer>"

    assert check_format(episode(f"{Q}: who?", f"{Q}: when?"), pool, rules).valid  # another sub-question
    assert check_format(episode(f"{Q}: who?", f"{other}: who?"), pool, rules).valid  # another model
    assert check_format(episode(f"{Q}: who?", "qwen2.5-7b: who?"), pool, rules).first == V.REPEAT_SEARCH  # an alias
    repeated = check_format(episode(f"{Q}: who?", f"{other}: who?", f"{Q}: Who? "), pool, rules)
    assert [(v.code, v.detail) for v in repeated.violations] == [(V.REPEAT_SEARCH, f"{Q} was already asked 'Who?'")]


def test_an_empty_placeholder_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^a placeholder must not be empty: it would flag every search$"):
        FormatRules(placeholders=("llm-name", " "))


def test_the_environment_skips_placeholders_but_executes_a_query_naming_its_model(pool) -> None:
    # as in Router-R1: a placeholder search is not routed; a name in the query is routed, then scored -1
    assert parse_turn(f"<search>{Q}: your-query</search>", pool) == Invalid(InvalidReason.PLACEHOLDER,
                                                                            f"{Q}: your-query")
    assert parse_turn(f"<search>{Q}: is {Q} good?</search>", pool) == Route(Q, f"is {Q} good?", Q)
    assert parse_turn(f"<search>{Q}: TBD</search>", pool, FormatRules(placeholders=("tbd",))) == Invalid(
        InvalidReason.PLACEHOLDER, f"{Q}: TBD")
