"""The routing protocol: turn parsing, observation rendering, format check, answer extraction.

Tags are plain text: <think>, <search>NAME: sub-question</search>, <information>, <answer>.
A response is a sequence of segments, each written either by the policy or by the environment
(an observation). Everything here looks only at what the policy wrote: a candidate that replies
with "<answer>Paris</answer>" inside an information block neither ends the episode nor scores.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from routerops.pool import Pool
from routerops.tokens import Tokenizer, decode_text

__all__ = [
    "ROUTER_R1",
    "Action",
    "Answer",
    "FormatResult",
    "FormatRules",
    "Invalid",
    "InvalidReason",
    "NoAction",
    "Route",
    "Segment",
    "UnknownModel",
    "Violation",
    "ViolationCode",
    "check_format",
    "extract_answer",
    "parse_search",
    "parse_turn",
    "render_observation",
    "sanitize_reply",
    "split_segments",
]

TAGS = ("think", "search", "information", "answer")
_TAG_RE = re.compile(r"<(/?)(think|search|information|answer)>")
_ACTION_RE = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
_INFO_RE = re.compile(r"<information>(.*?)</information>", re.DOTALL)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# Any protocol-looking tag inside a candidate reply, including ones with attributes or spaces.
_REPLY_TAG_RE = re.compile(r"<\s*(/?)\s*(think|search|information|answer)\b[^>]*>", re.IGNORECASE)



@dataclass(frozen=True)
class FormatRules:
    """The format rules' options (params `rollout.format`). The defaults are Router-R1's code;
    each option set otherwise is a named deviation (docs/scoring.md lists them all).

    `placeholders`: a search whose content contains one of these (case-insensitive) copies the
    prompt instead of filling it in: it is not executed and scores -1. Router-R1 flags its
    prompt's literals `llm-name` and `your-query`; ours shows `MODEL-NAME: your sub-question`,
    so the defaults hold both prompts' literals.
    `forbid_stray_text`: Router-R1 accepts text between blocks; True makes it -1.
    `empty_answer_invalid`: Router-R1 has no rule for `<answer></answer>` (it is valid and
    wrong); True makes it -1.
    `forbid_repeat_search`: Router-R1 lets a router ask one model the same sub-question twice;
    candidates answer at temperature 0 with a fixed seed, so the second call buys the same reply
    at full price. True makes it -1 (the same model with another sub-question stays valid).
    """

    placeholders: tuple[str, ...] = ("llm-name", "your-query", "model-name", "your sub-question")
    forbid_stray_text: bool = False
    empty_answer_invalid: bool = False
    forbid_repeat_search: bool = False

    def __post_init__(self) -> None:
        if any(not p.strip() for p in self.placeholders):
            raise ValueError("a placeholder must not be empty: it would flag every search")
        object.__setattr__(self, "placeholders", tuple(p.casefold() for p in self.placeholders))


ROUTER_R1 = FormatRules()

# Router-R1 punishes a think block whose stripped content is one of these.
_EMPTY_THINK = frozenset({"", "..."})


# ---------------------------------------------------------------------------------------------
# Turn parsing
# ---------------------------------------------------------------------------------------------


class InvalidReason(enum.StrEnum):
    NO_COLON = "no_colon"
    MULTIPLE_COLONS = "multiple_colons"
    EMPTY_MODEL = "empty_model"
    EMPTY_QUERY = "empty_query"
    PLACEHOLDER = "placeholder"


@dataclass(frozen=True)
class Route:
    """Call `model` (its canonical pool name) with `query`."""

    model: str
    query: str
    written_name: str


@dataclass(frozen=True)
class UnknownModel:
    """Well-formed route to a name that is not in the pool: observation 'None', cost 0."""

    written_name: str
    query: str


@dataclass(frozen=True)
class Invalid:
    """A malformed search action: empty observation, the episode goes on."""

    reason: InvalidReason
    content: str


@dataclass(frozen=True)
class Answer:
    text: str


@dataclass(frozen=True)
class NoAction:
    """The turn ended (EOS or token limit) without a complete search or answer."""


Action = Route | UnknownModel | Invalid | Answer | NoAction


def parse_search(content: str, pool: Pool, rules: FormatRules = ROUTER_R1) -> Route | UnknownModel | Invalid:
    """Parse the inside of a <search> block: no placeholder, exactly one colon, `NAME: query`."""
    folded = content.casefold()
    if any(p in folded for p in rules.placeholders):
        return Invalid(InvalidReason.PLACEHOLDER, content)
    colons = content.count(":")
    if colons == 0:
        return Invalid(InvalidReason.NO_COLON, content)
    if colons > 1:
        return Invalid(InvalidReason.MULTIPLE_COLONS, content)
    name, query = (part.strip() for part in content.split(":", 1))
    if not name:
        return Invalid(InvalidReason.EMPTY_MODEL, content)
    if not query:
        return Invalid(InvalidReason.EMPTY_QUERY, content)
    cand = pool.resolve(name)
    if cand is None:
        return UnknownModel(name, query)
    return Route(cand.name, query, name)


def parse_turn(text: str, pool: Pool, rules: FormatRules = ROUTER_R1) -> Action:
    """The action of one policy turn: its first complete <search> or <answer> block."""
    m = _ACTION_RE.search(text)
    if m is None:
        return NoAction()
    if m.group(1) == "answer":
        return Answer(m.group(2).strip())
    return parse_search(m.group(2), pool, rules)


# ---------------------------------------------------------------------------------------------
# Observations
# ---------------------------------------------------------------------------------------------


def sanitize_reply(text: str) -> str:
    """Neutralise protocol tags a candidate wrote, so its reply can never close the block early,
    inject an answer, or be mistaken for the policy's own tags: `<answer>` becomes `[answer]`."""
    return _REPLY_TAG_RE.sub(lambda m: f"[{m.group(1)}{m.group(2).lower()}]", text)


OBS_PREFIX = "\n\n<information>"
OBS_SUFFIX = "</information>\n\n"


def render_observation(reply: str | None, codec: Tokenizer | None = None, max_tokens: int | None = None) -> str:
    """Wrap a candidate reply as an information block.

    The inner text (not the tags) is truncated to `max_tokens` tokens of `codec`, so the closing
    tag always survives; Router-R1 truncated the whole block and could cut `</information>`,
    which then zeroed the format reward of an otherwise valid trajectory. `None` renders the
    literal 'None' (Router-R1's reply for an unknown model).
    """
    inner = "None" if reply is None else sanitize_reply(reply.strip())
    if codec is not None and max_tokens is not None:
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        ids = codec.encode(inner, add_special_tokens=False)
        if len(ids) > max_tokens:
            # Decoding a prefix can end in half a multi-byte character; drop the replacement char.
            inner = decode_text(codec, ids[:max_tokens]).rstrip("\ufffd")
    return f"{OBS_PREFIX}{inner}{OBS_SUFFIX}"


# ---------------------------------------------------------------------------------------------
# Segments, format check and answer extraction
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    kind: Literal["policy", "observation"]
    text: str


def split_segments(response: str) -> list[Segment]:
    """Recover segments from a flat response string (for responses scored after the fact).

    Each `<information>…</information>` span (first closing tag wins) is an observation. Our own
    observations are sanitised, so for responses this project produced the split is exact.
    """
    out: list[Segment] = []
    pos = 0
    for m in _INFO_RE.finditer(response):
        if m.start() > pos:
            out.append(Segment("policy", response[pos : m.start()]))
        out.append(Segment("observation", m.group(0)))
        pos = m.end()
    if pos < len(response):
        out.append(Segment("policy", response[pos:]))
    return out


class ViolationCode(enum.StrEnum):
    EMPTY = "empty"
    NOT_START_WITH_THINK = "not_start_with_think"
    STRAY_TEXT = "stray_text"
    NESTED_TAG = "nested_tag"
    UNBALANCED_TAG = "unbalanced_tag"
    POLICY_INFORMATION = "policy_wrote_information"
    SEARCH_WITHOUT_INFORMATION = "search_without_information"
    INFORMATION_WITHOUT_SEARCH = "information_without_search"
    MALFORMED_INFORMATION = "malformed_information"
    NO_THINK = "no_think"
    EMPTY_THINK = "empty_think"
    NO_ANSWER = "no_answer"
    MULTIPLE_ANSWERS = "multiple_answers"
    TEXT_AFTER_ANSWER = "text_after_answer"
    EMPTY_ANSWER = "empty_answer"
    SEARCH_NO_COLON = "search_no_colon"
    SEARCH_MULTIPLE_COLONS = "search_multiple_colons"
    SEARCH_EMPTY_MODEL = "search_empty_model"
    SEARCH_EMPTY_QUERY = "search_empty_query"
    SEARCH_PLACEHOLDER = "search_placeholder"
    SEARCH_UNKNOWN_MODEL = "search_unknown_model"
    SEARCH_NAME_IN_QUERY = "search_name_in_query"
    REPEAT_SEARCH = "repeat_search"


_INVALID_TO_VIOLATION = {
    InvalidReason.NO_COLON: ViolationCode.SEARCH_NO_COLON,
    InvalidReason.MULTIPLE_COLONS: ViolationCode.SEARCH_MULTIPLE_COLONS,
    InvalidReason.EMPTY_MODEL: ViolationCode.SEARCH_EMPTY_MODEL,
    InvalidReason.EMPTY_QUERY: ViolationCode.SEARCH_EMPTY_QUERY,
    InvalidReason.PLACEHOLDER: ViolationCode.SEARCH_PLACEHOLDER,
}


@dataclass(frozen=True)
class Violation:
    code: ViolationCode
    detail: str


@dataclass(frozen=True)
class FormatResult:
    violations: tuple[Violation, ...]

    @property
    def valid(self) -> bool:
        return not self.violations

    @property
    def first(self) -> ViolationCode | None:
        return self.violations[0].code if self.violations else None


@dataclass(frozen=True)
class _Event:
    kind: Literal["open", "close", "obs", "text"]
    tag: str
    text: str


def _events(segments: Sequence[Segment]) -> list[_Event]:
    events: list[_Event] = []
    for seg in segments:
        if seg.kind == "observation":
            if seg.text.strip():
                events.append(_Event("obs", "information", seg.text))
            continue
        pos = 0
        for m in _TAG_RE.finditer(seg.text):
            if seg.text[pos : m.start()]:
                events.append(_Event("text", "", seg.text[pos : m.start()]))
            events.append(_Event("close" if m.group(1) else "open", m.group(2), m.group(0)))
            pos = m.end()
        if seg.text[pos:]:
            events.append(_Event("text", "", seg.text[pos:]))
    return events


def check_format(response: str | Sequence[Segment], pool: Pool, rules: FormatRules = ROUTER_R1) -> FormatResult:
    """Router-R1's format rules over the policy's text; all violations, first one first.

    Valid means: starts with <think>; blocks are balanced and never nested; at least one think,
    none empty or only `...`; every search is followed by its information block, holds no
    placeholder and names exactly one known model with one colon and a non-empty query that does
    not contain the name it routes to; exactly one answer, last, with nothing after it. `rules`
    adds the deviations it names (text between blocks, an empty answer).
    """
    segments = split_segments(response) if isinstance(response, str) else list(response)
    events = _events(segments)
    found: list[Violation] = []

    def add(code: ViolationCode, detail: str) -> None:
        found.append(Violation(code, detail))

    if not any(e.kind != "text" or e.text.strip() for e in events):
        return FormatResult((Violation(ViolationCode.EMPTY, "empty response"),))

    first = next((e for e in events if not (e.kind == "text" and not e.text.strip())), None)
    if first is None or not (first.kind == "open" and first.tag == "think"):
        add(ViolationCode.NOT_START_WITH_THINK, "response must start with <think>")

    open_tag: str | None = None
    body: list[str] = []
    thinks = 0
    answers: list[str] = []
    pending_search = False  # a closed search still waiting for its information block
    asked: set[tuple[str, str]] = set()  # (model, folded sub-question) of the routes so far
    last_answer_end = -1
    # Text after the final answer is reported once as TEXT_AFTER_ANSWER, not as stray text.
    final_close = max((i for i, e in enumerate(events) if e.kind == "close" and e.tag == "answer"), default=len(events))
    for i, ev in enumerate(events):
        if ev.kind == "text":
            if open_tag is not None:
                body.append(ev.text)
            elif rules.forbid_stray_text and ev.text.strip() and i < final_close:
                add(ViolationCode.STRAY_TEXT, f"text outside any block: {ev.text.strip()[:40]!r}")
            continue
        if pending_search and ev.kind != "obs":
            add(ViolationCode.SEARCH_WITHOUT_INFORMATION, "a <search> is not followed by <information>")
            pending_search = False
        if ev.kind == "obs":
            if open_tag is not None:
                add(ViolationCode.NESTED_TAG, f"information block inside <{open_tag}>")
            elif not pending_search:
                add(ViolationCode.INFORMATION_WITHOUT_SEARCH, "an <information> block follows no <search>")
            inner = ev.text.strip()
            if not (inner.startswith("<information>") and inner.endswith("</information>")):
                add(ViolationCode.MALFORMED_INFORMATION, "observation is not one information block")
            pending_search = False
            continue
        if ev.tag == "information":
            add(ViolationCode.POLICY_INFORMATION, f"the policy wrote {ev.text}")
            continue
        if ev.kind == "open":
            if open_tag is not None:
                add(ViolationCode.NESTED_TAG, f"<{ev.tag}> inside <{open_tag}>")
                continue
            open_tag, body = ev.tag, []
            continue
        # close
        if open_tag != ev.tag:
            add(ViolationCode.UNBALANCED_TAG, f"</{ev.tag}> closes {'<' + open_tag + '>' if open_tag else 'nothing'}")
            continue
        content = "".join(body)
        if ev.tag == "think":
            thinks += 1
            if content.strip() in _EMPTY_THINK:
                add(ViolationCode.EMPTY_THINK, f"<think>{content.strip()}</think> holds no reasoning")
        elif ev.tag == "search":
            parsed = parse_search(content, pool, rules)
            if isinstance(parsed, Invalid):
                add(_INVALID_TO_VIOLATION[parsed.reason], f"<search>{content.strip()[:60]}</search>")
            else:
                if isinstance(parsed, UnknownModel):
                    add(ViolationCode.SEARCH_UNKNOWN_MODEL, f"unknown model {parsed.written_name!r}")
                # Router-R1: the model's name, as written, inside its own query
                if parsed.written_name.casefold() in parsed.query.casefold():
                    add(ViolationCode.SEARCH_NAME_IN_QUERY, f"the query names {parsed.written_name!r}")
                if isinstance(parsed, Route) and rules.forbid_repeat_search:
                    key = (parsed.model, " ".join(parsed.query.casefold().split()))
                    if key in asked:
                        add(ViolationCode.REPEAT_SEARCH,
                            f"{parsed.model} was already asked {parsed.query.strip()[:40]!r}")
                    asked.add(key)
            pending_search = True
        elif ev.tag == "answer":
            answers.append(content)
            if rules.empty_answer_invalid and not content.strip():
                add(ViolationCode.EMPTY_ANSWER, "empty <answer>")
            last_answer_end = i
        open_tag = None
    if pending_search:
        add(ViolationCode.SEARCH_WITHOUT_INFORMATION, "the last <search> has no <information>")
    if open_tag is not None:
        add(ViolationCode.UNBALANCED_TAG, f"<{open_tag}> is never closed")
    if thinks == 0:
        add(ViolationCode.NO_THINK, "no <think> block")
    if not answers:
        add(ViolationCode.NO_ANSWER, "no <answer> block")
    elif len(answers) > 1:
        add(ViolationCode.MULTIPLE_ANSWERS, f"{len(answers)} <answer> blocks")
    if answers:
        trailing = events[last_answer_end + 1 :]
        if any(e.kind != "text" or e.text.strip() for e in trailing):
            add(ViolationCode.TEXT_AFTER_ANSWER, "content after the final </answer>")
    # Keep one violation per code, in order of first appearance.
    by_code: dict[ViolationCode, Violation] = {}
    for v in found:
        by_code.setdefault(v.code, v)
    return FormatResult(tuple(by_code.values()))


def extract_answer(response: str | Sequence[Segment]) -> str | None:
    """The last <answer> the policy wrote; never one inside an information block."""
    segments = split_segments(response) if isinstance(response, str) else response
    last: str | None = None
    for seg in segments:
        if seg.kind != "policy":
            continue
        for m in _ANSWER_RE.finditer(seg.text):
            last = m.group(1).strip()
    return last
