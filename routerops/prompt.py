"""The router's prompt, rendered from the pool in our own words; a user template may replace it.

A template is a `string.Template` text with `$question`, `$candidates` (one line per model with
its descriptor) or `$model_names` (names only, comma-separated), and optionally `$max_turns`
(`$$` for a literal dollar sign). The default lists each candidate with its descriptor and,
when asked, its output price; prices are off by default so that a price change does not change
the prompts, and with them the training data (see params `prompt.show_prices`).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from routerops.pool import Pool
from routerops.tokens import Tokenizer

__all__ = ["DEFAULT_TEMPLATE", "TemplateError", "apply_chat_template", "build_messages",
           "load_template", "normalize_question", "render_candidates", "render_prompt"]

DEFAULT_TEMPLATE = """\
Answer the question at the end. You may consult other language models, listed below, to help you.

How to work:
- Reason inside <think> and </think>. Always begin with a <think> block.
- To consult a model, write <search>MODEL-NAME: your sub-question</search> with one exact name \
from the list and a single colon. Each consultation asks one model one self-contained question.
- The model's reply will appear between <information> and </information>.
- You may consult models at most $max_turns times; consult none if you already know the answer.
- Finish with only the final answer, a few words and no explanation, inside <answer> and \
</answer>, for example <answer>Paris</answer>.

Models you can consult:
$candidates

Question: $question"""

ALLOWED = frozenset({"question", "candidates", "model_names", "max_turns"})


class TemplateError(ValueError):
    pass


def normalize_question(question: str) -> str:
    """Strip, fold white space, and end with a question mark (Router-R1's preprocessing)."""
    q = " ".join(question.split())
    if not q:
        raise ValueError("question is empty")
    return q if q.endswith("?") else q + "?"


def _placeholders(template: str) -> set[str]:
    names: set[str] = set()
    for m in string.Template.pattern.finditer(template):
        if m.group("invalid") is not None:
            raise TemplateError(f"invalid '$' at offset {m.start('invalid')}: use $$ for a dollar sign")
        name = m.group("named") or m.group("braced")
        if name:
            names.add(name)
    return names


def load_template(path: str | Path) -> str:
    """Read and check a user template: required placeholders present, no unknown ones."""
    p = Path(path)
    try:
        # A file's final newline is not part of the prompt.
        text = p.read_text(encoding="utf-8").rstrip("\n")
    except OSError as exc:
        raise TemplateError(f"{p}: cannot read template ({exc.strerror})") from None
    check_template(text, str(p))
    return text


def check_template(text: str, where: str = "<template>") -> None:
    names = _placeholders(text)
    missing = [] if "question" in names else ["$question"]
    if not names & {"candidates", "model_names"}:
        missing.append("$candidates or $model_names")
    if missing:
        raise TemplateError(f"{where}: missing placeholder(s) {', '.join(missing)}")
    unknown = sorted(names - ALLOWED)
    if unknown:
        raise TemplateError(f"{where}: unknown placeholder(s) {', '.join('$' + u for u in unknown)}; "
                            f"allowed: {', '.join('$' + a for a in sorted(ALLOWED))}")


def render_candidates(pool: Pool, show_prices: bool = False) -> str:
    lines = []
    for c in pool:
        line = f"- {c.name}: {c.descriptor}"
        if show_prices:
            line += f" (${c.price.output_usd_per_mtok:.2f} per million output tokens)"
        lines.append(line)
    return "\n".join(lines)


def render_prompt(question: str, pool: Pool, *, max_turns: int = 4, show_prices: bool = False,
                  template: str | None = None) -> str:
    tmpl = DEFAULT_TEMPLATE if template is None else template
    if template is not None:
        check_template(template)
    return string.Template(tmpl).substitute(
        question=normalize_question(question),
        candidates=render_candidates(pool, show_prices),
        model_names=", ".join(c.name for c in pool),
        max_turns=max_turns,
    )


def build_messages(question: str, pool: Pool, **kwargs: Any) -> list[dict[str, str]]:
    """Chat messages for the router: one user turn holding rules, candidates and question."""
    return [{"role": "user", "content": render_prompt(question, pool, **kwargs)}]


@runtime_checkable
class _Templating(Protocol):
    """A HuggingFace tokenizer's chat-template side."""

    chat_template: Any

    def apply_chat_template(self, conversation: Any, **kw: Any) -> Any: ...


def apply_chat_template(tokenizer: Tokenizer, messages: Sequence[dict[str, str]]) -> str:
    """Render messages with the tokenizer's own chat template, ready for generation.

    Tokenizers without a chat template (the byte-level tokenizer used by scripted runs) get a
    plain 'role: content' rendering, so one code path serves every policy.
    """
    if isinstance(tokenizer, _Templating) and tokenizer.chat_template:
        return str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))
    body = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
    return body + "<|assistant|>\n"
