"""The token interface the rollout needs, and a byte-level tokenizer that needs no files.

HuggingFace tokenizers satisfy `Tokenizer` (their `decode` also takes batches and so is typed to
return a list too; `decode_text` is how the project decodes one sequence). `ByteTokenizer` serves
scripted policies and tests: ids 0-255 are UTF-8 bytes, 256 is EOS. Tags are ordinary text in
both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["ByteTokenizer", "Tokenizer", "decode_text"]


@runtime_checkable
class Tokenizer(Protocol):
    @property
    def eos_token_id(self) -> int | None: ...

    def encode(self, text: str, /, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: list[int], /, skip_special_tokens: bool = ...) -> str | list[str]: ...


def decode_text(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """The text of one id sequence, special tokens dropped."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    if not isinstance(text, str):  # a batch decode: a bug at the call site, never data
        raise TypeError(f"{type(tokenizer).__name__}.decode of one sequence returned {type(text).__name__}")
    return text


class ByteTokenizer:
    EOS = 256
    chat_template = None
    vocab_size = 257

    @property
    def eos_token_id(self) -> int | None:
        return self.EOS

    def encode(self, text: str, /, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int], /, skip_special_tokens: bool = False) -> str:
        data = bytes(i for i in token_ids if 0 <= i < 256)
        text = data.decode("utf-8", errors="replace")
        if not skip_special_tokens and self.EOS in token_ids:
            text += "<eos>"
        return text
