"""Upstream's streaming cuts (`chunks.Chunker`) on token sequences of every length: what the chunks hold. That they
are upstream's own cuts is `test_upstream.py::test_t2s_streaming_chunks_match_upstream`."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.gpt_sovits.chunks import CHECK_TOKENS, Chunker


def _chunks(tokens: list[int], eos: bool, chunk_length: int, mute: torch.Tensor | None) -> list:
    chunker = Chunker([7, 7, 7], chunk_length, mute, 0.5)
    return [chunk for i, token in enumerate(tokens)
            for chunk in chunker.step(token, i + 1 == len(tokens), eos and i + 1 == len(tokens))]


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(0, 49), min_size=1, max_size=80), eos=st.booleans(),
       chunk_length=st.integers(0, 20))
def test_fixed_length_chunks_are_the_tokens_in_order(tokens, eos, chunk_length) -> None:
    chunks = _chunks(tokens, eos, chunk_length, None)
    assert [last for _, last in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(len(c) == max(chunk_length, 1) for c, _ in chunks[:-1])
    kept = tokens[:-1] if eos else tokens
    assert [t for c, _ in chunks if c is not None for t in c] == kept


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(0, 49), min_size=1, max_size=80), eos=st.booleans(),
       chunk_length=st.integers(1, 12), seed=st.integers(0, 100))
def test_mute_chunks_overlap_after_each_cut(tokens, eos, chunk_length, seed) -> None:
    """Each chunk holds every token since the last cut; the cut moves past a mute-like pair at least chunk_length
    tokens in, so the next chunk starts with the first one's tail, and the cuts with the last chunk cover the tokens
    in order."""
    mute = torch.rand(50, generator=torch.Generator().manual_seed(seed))
    chunks = _chunks(tokens, eos, chunk_length, mute)
    kept = tokens[:-1] if eos else tokens
    covered = []
    for (chunk, _), (following, _) in zip(chunks, chunks[1:]):
        advance = next(a for a in range(chunk_length, len(chunk) + 1)
                       if (following or [])[: len(chunk) - a] == chunk[a:])
        assert len(chunk) >= chunk_length + CHECK_TOKENS
        covered += chunk[:advance]
    assert covered + (chunks[-1][0] or []) == kept
