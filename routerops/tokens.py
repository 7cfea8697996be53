"""The token interface the rollout needs, and a byte-level tokenizer that needs no files.

HuggingFace tokenizers already satisfy `Tokenizer`; `ByteTokenizer` serves scripted policies
and tests: ids 0-255 are UTF-8 bytes, 256 is EOS. Tags are ordinary text in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["ByteTokenizer", "Tokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class ByteTokenizer:
    EOS = 256
    eos_token_id: int | None = EOS
    chat_template = None
    vocab_size = 257

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        data = bytes(i for i in ids if 0 <= i < 256)
        text = data.decode("utf-8", errors="replace")
        if not skip_special_tokens and self.EOS in ids:
            text += "<eos>"
        return text
