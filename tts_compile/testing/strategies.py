"""Hypothesis strategies for the exactness contract: mel lengths, bucket sets, batch compositions, stream pieces."""

from __future__ import annotations

from hypothesis import strategies as st


def lengths(min_frames: int = 1, max_frames: int = 600) -> st.SearchStrategy[int]:
    """Mel lengths in frames, biased towards the short ones where windows and edges interact most."""
    return st.one_of(st.integers(min_frames, min(max_frames, 64)), st.integers(min_frames, max_frames))


def chunk_sizes(max_chunk: int = 200) -> st.SearchStrategy[int]:
    """Default-bucket chunk sizes, from tiny (many windows, heavy overlap) to larger than most inputs."""
    return st.integers(1, max_chunk)


def bucket_lengths(context: int, max_length: int = 300) -> st.SearchStrategy[tuple[int, ...]]:
    """Explicit window-length sets valid for `context` (every window keeps at least one frame)."""
    window = st.integers(2 * context + 1, max(2 * context + 1, max_length))
    return st.lists(window, min_size=1, max_size=4, unique=True).map(lambda xs: tuple(sorted(xs)))


def batch_lengths(max_batch: int = 4, max_frames: int = 300) -> st.SearchStrategy[list[int]]:
    """Per-item valid lengths of a padded batch (the longest one sets the padded length)."""
    return st.lists(st.integers(1, max_frames), min_size=1, max_size=max_batch)


def pieces(total: int) -> st.SearchStrategy[list[int]]:
    """A split of `total` frames into stream pieces (some possibly empty), in order."""
    cuts = st.lists(st.integers(0, total), max_size=8).map(sorted)
    return cuts.map(lambda cs: [b - a for a, b in zip([0, *cs], [*cs, total])])
