"""Text out of a growing list of token ids: what streaming needs from a tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TextDecoder:
    """The text that each new batch of tokens adds to a reply.

    Decoding the whole reply at every token costs O(n^2); this decodes a window that starts
    at the tokens already shown (their text is decoded again and cut off, so a tokenizer that
    drops a leading space at the start of a decode still joins words correctly) and holds
    back text that ends in U+FFFD: a character whose bytes span several tokens appears whole.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._window = 0  # ids[_window:_shown] were shown; their text is the prefix to cut
        self._shown = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=self.skip_special_tokens))

    def push(self, ids: Sequence[int]) -> str:
        """Adds token ids; returns the text they complete ('' while a character is partial)."""
        self.ids.extend(int(i) for i in ids)
        before = self._decode(self.ids[self._window : self._shown])
        after = self._decode(self.ids[self._window :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._window, self._shown = self._shown, len(self.ids)
        return after[len(before) :]


class StopStrings:
    """Finds the first of ``stops`` in streamed text. ``feed`` returns the text that is safe
    to show (held back: a tail that could begin a stop string) and whether a stop was met;
    the stop string and everything after it are never shown."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return buf[: min(hits)], True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:k]):
                    keep = k
                    break
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """The held-back tail, at the end of a reply that met no stop string."""
        held, self._held = self._held, ""
        return held
