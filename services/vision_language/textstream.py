"""Token ids -> text deltas, one token at a time, and stop sequences found across token boundaries."""

from __future__ import annotations

from typing import Any


class IncrementalDecoder:
    """Decodes a growing token sequence into text deltas (TGI's prefix/read offsets): a delta is released
    only once its bytes form whole characters, and decoding keeps a little left context so tokenizers
    that drop leading spaces (SentencePiece) still join words right. Cost per token is constant."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self._before = ""  # decode(ids[prefix:read]), kept: it changes only when the offsets move

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._before
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            self._before = self._decode(self.ids[self._prefix : self._read])
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (e.g. bytes that never formed a whole character)."""
        after = self._decode(self.ids[self._prefix :])
        before, self._before = self._before, ""
        self._prefix = self._read = len(self.ids)
        return after[len(before) :]


class StopMatcher:
    """Holds back text that could be the start of a stop sequence; reports a stop when one appears.
    Text before the stop is released; the stop sequence and anything after it never are."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to release, whether a stop sequence was reached)."""
        if not self._stops:
            return text, False
        pending = self._pending + text
        found = [i for i in (pending.find(stop) for stop in self._stops) if i >= 0]
        if found:
            self._pending = ""
            return pending[: min(found)], True
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(pending)), hold, -1):
                if pending.endswith(stop[:k]):
                    hold = k
                    break
        self._pending = pending[len(pending) - hold :] if hold else ""
        return pending[: len(pending) - hold], False

    def flush(self) -> str:
        pending, self._pending = self._pending, ""
        return pending
