"""Incremental detokenization with stop strings checked on new text only.

Decoding the whole output every token is O(n^2) over a request; instead each step decodes a short
window (the tokens since the last safe point, as vLLM and TGI do): the window's text minus the text
of its already-emitted prefix is the new text, unless it ends in U+FFFD (a multi-byte character cut
mid-way), in which case we wait for the next token. Stop strings are searched only in the new text
plus the `longest stop - 1` characters before it, and that many trailing characters are held back
from the stream until they cannot start a stop string.
"""

from __future__ import annotations

from typing import Any


class IncrementalDetokenizer:
    """One sequence's output text, grown token by token; owned by the engine thread."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: list[str]) -> None:
        self.tok = tokenizer
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        # a few prompt tokens as context, so the first output token decodes with its leading space
        self.ids: list[int] = list(prompt_ids[-4:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""  # the output text so far (cut at a stop string once one is found)
        self.emitted = 0  # characters of `text` already published
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> bool:
        """Append one token; returns True when a stop string now ends the output (text is cut there)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new = full[len(prefix):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            start = max(0, len(self.text) - self.hold)
            self.text += new
            if self.stop:
                window = self.text[start:]
                cuts = [window.find(s) for s in self.stop if s in window]
                if cuts:
                    self.text = self.text[:start + min(cuts)]
                    self.stopped = True
        return self.stopped

    def flush(self) -> None:
        """At the end: decode whatever is still pending (a trailing partial character included)."""
        if not self.stopped and self.read_offset < len(self.ids):
            prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
            full = self._decode(self.ids[self.prefix_offset:])
            self.text += full[len(prefix):]
            self.read_offset = len(self.ids)

    def take(self, final: bool) -> str:
        """The text not yet published that is safe to publish now (everything when `final`)."""
        upto = len(self.text) if final or self.stopped else max(self.emitted, len(self.text) - self.hold)
        out = self.text[self.emitted:upto]
        self.emitted = upto
        return out
