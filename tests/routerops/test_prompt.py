from __future__ import annotations

import pytest

from routerops.prompt import (
    TemplateError,
    apply_chat_template,
    build_messages,
    load_template,
    normalize_question,
    render_prompt,
)
from routerops.tokens import ByteTokenizer


@pytest.mark.parametrize(("raw", "norm"), [
    ("who wrote hamlet", "who wrote hamlet?"),
    ("  who wrote\n hamlet?  ", "who wrote hamlet?"),
    ("Is it?", "Is it?"),
])
def test_question_normalisation(raw: str, norm: str) -> None:
    assert normalize_question(raw) == norm


def test_empty_question_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        normalize_question("  \n")


def test_prompt_lists_every_candidate_and_hides_prices_by_default(pool) -> None:
    text = render_prompt("capital of france", pool)
    for c in pool:
        assert f"- {c.name}: {c.descriptor}" in text
    assert "$" not in text and text.endswith("Question: capital of france?")
    priced = render_prompt("capital of france", pool, show_prices=True)
    assert "$1.20 per million output tokens" in priced


def test_price_change_leaves_default_prompt_unchanged(pool) -> None:
    cheaper = pool.model_copy(update={"candidates": tuple(
        c.model_copy(update={"price": c.price.model_copy(update={"output_usd_per_mtok": 0.01})}) for c in pool)})
    assert render_prompt("q", pool) == render_prompt("q", cheaper)
    assert render_prompt("q", pool, show_prices=True) != render_prompt("q", cheaper, show_prices=True)


def test_user_template_replaces_ours(pool, tmp_path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("Models:\n$candidates\nAt most $max_turns calls. Costs in $$.\nQ: $question")
    text = render_prompt("hi", pool, template=load_template(path), max_turns=2)
    assert text.startswith("Models:\n- Qwen2.5-7B-Instruct") and "At most 2 calls. Costs in $." in text
    assert text.endswith("Q: hi?")


@pytest.mark.parametrize(("body", "message"), [
    ("no placeholders", "missing placeholder(s) $question, $candidates or $model_names"),
    ("$question only", "missing placeholder(s) $candidates or $model_names"),
    ("$candidates only", "missing placeholder(s) $question"),
    ("$question $candidates $price", "unknown placeholder(s) $price"),
    ("$question $candidates costs $ 5", "invalid '$'"),
])
def test_bad_templates(tmp_path, body: str, message: str) -> None:
    path = tmp_path / "t.txt"
    path.write_text(body)
    with pytest.raises(TemplateError) as info:
        load_template(path)
    assert message in str(info.value)


def test_missing_template_file(tmp_path) -> None:
    with pytest.raises(TemplateError, match="cannot read template"):
        load_template(tmp_path / "missing.txt")


def test_chat_template_fallback_and_hf(pool) -> None:
    msgs = build_messages("q", pool)
    text = apply_chat_template(ByteTokenizer(), msgs)
    assert text.startswith("<|user|>\n") and text.endswith("<|assistant|>\n")

    class WithTemplate:
        chat_template = "x"

        def apply_chat_template(self, conversation, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True
            return "RENDERED:" + conversation[0]["content"][:5]

    assert apply_chat_template(WithTemplate(), msgs) == "RENDERED:" + msgs[0]["content"][:5]


def test_names_only_template(pool, repo_root) -> None:
    text = render_prompt("who?", pool, template=load_template(repo_root / "templates" / "compact.txt"))
    assert "Qwen2.5-7B-Instruct, LLaMA-3.1-8B-Instruct" in text and text.endswith("who?")
    assert pool.get("Qwen2.5-7B-Instruct").descriptor not in text
