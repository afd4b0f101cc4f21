"""The seam of a continued stream (`gateway.pipeline.seam`), driven directly: a repeat of the
sent text's end is trimmed however the continuation is split into pieces, a continuation that
goes straight on passes at once, and a chance match shorter than the minimum is kept."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gateway.pipeline.seam import Seam, prefill_seam

SENT = "Once upon a time, a small gateway carried"
REST = " every word from the models to the apps."


def through(seam: Seam, pieces: list[str]) -> str:
    return "".join(seam.feed(p) for p in pieces) + seam.flush()


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


@given(st.integers(min_value=0, max_value=len(SENT)), st.lists(st.integers(0, 200), max_size=8))
def test_a_repeated_end_is_trimmed_however_it_is_split(overlap: int, cuts: list[int]) -> None:
    repeated = SENT[len(SENT) - overlap :] if overlap >= 8 else ""
    assert through(Seam(SENT), split(repeated + REST, cuts)) == REST


def test_a_continuation_that_goes_straight_on_is_not_held_back() -> None:
    seam = Seam(SENT)
    assert seam.feed(" every") == " every"
    assert not seam.open


def test_a_possible_repeat_is_held_only_until_it_is_not_one() -> None:
    seam = Seam(SENT)
    assert seam.feed(" small") == ""  # could be the start of " small gateway carried"
    assert seam.feed(" dog") == " small dog"


def test_a_short_chance_match_is_kept() -> None:
    assert through(Seam("it was red"), [" red", " and blue"]) == " red and blue"
    # Shorter than the minimum but all of the sent text: a repeat.
    assert through(Seam("red"), ["red and blue"]) == " and blue"


def test_a_prefill_seam_drops_only_the_stripped_whitespace() -> None:
    prefill, seam = prefill_seam("Once upon a ")
    assert prefill == "Once upon a"
    assert through(seam, [" time"]) == "time"
    prefill, seam = prefill_seam("Once upon a")
    assert prefill == "Once upon a" and through(seam, [" time"]) == " time"
