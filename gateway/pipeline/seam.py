"""Where a continued stream joins the text already sent: no character repeated, none lost.

A model asked to continue an answer cut short may begin by repeating the end of it (a few
words, a sentence, now and then the whole answer). `Seam` trims such a repeat from the
continuation's beginning. It holds the continuation back only while what came so far could
still be the start of a repeat of the sent text's tail, so a continuation that goes straight
on is passed on at once, and a repeat is never longer than `window` characters to wait for.

Pure: no I/O, no clock; `tests/test_midstream_seam.py` drives it directly.
"""

from __future__ import annotations

WINDOW = 2000  # how much of the sent text's tail a repeat is looked for in
MIN_OVERLAP = 8  # a shorter match is taken for chance, not a repeat (unless it is all of it)


class Seam:
    """Trims the continuation's repeat of `before` (the tail of the text sent before the
    seam). `feed` each piece of continuation text and send what it returns; `flush` when the
    continuation ends (or a chunk must go out) while the seam is still undecided."""

    __slots__ = ("_before", "_held", "_min", "open")

    def __init__(self, before: str, *, min_overlap: int = MIN_OVERLAP) -> None:
        self._before = before[-WINDOW:]
        self._min = max(1, min(min_overlap, len(self._before)))
        self._held = ""
        self.open = bool(self._before)  # still deciding; closed, text passes untouched

    def feed(self, text: str) -> str:
        if not self.open:
            return text
        self._held += text
        if self._undecided():
            return ""
        return self.flush()

    def flush(self) -> str:
        """Decide now: the held text with the longest repeat of `before`'s tail removed."""
        if not self.open:
            return ""
        self.open = False
        held, before = self._held, self._before
        self._held = ""
        for size in range(min(len(held), len(before)), self._min - 1, -1):
            if held.startswith(before[-size:]):
                return held[size:]
        return held

    def _undecided(self) -> bool:
        """Whether the held text could still grow into a longer repeat: it occurs inside
        `before` at a place whose suffix is longer than it and long enough to count."""
        held, before = self._held, self._before
        if len(held) >= len(before):
            return False
        at = before.find(held)
        while at != -1:
            rest = len(before) - at
            if rest > len(held) and rest >= self._min:
                return True
            at = before.find(held, at + 1)
        return False


def prefill_seam(sent: str) -> tuple[str, Seam]:
    """For a prefill continuation (the sent text as the start of the model's own turn): the
    prefill, without the trailing whitespace Anthropic refuses to end a prefill with, and a
    seam that drops the continuation's repeat of exactly that whitespace."""
    prefill = sent.rstrip()
    return prefill, Seam(sent[len(prefill) :], min_overlap=1)
