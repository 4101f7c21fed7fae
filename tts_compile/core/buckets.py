"""Buckets: how inputs of any size become a few static shapes, and the planner of vocoder windows.

Vocabulary (used the same way everywhere in tts_compile):

* **window**: a slice `[start, stop)` of one item's mel, fed to the vocoder as it is (never padded).
* **context**: frames on each inner side of a window whose output is computed and thrown away; at least the
  vocoder's receptive field, so the frames in between (the window's *kept* part) come out exactly as the full,
  unchunked call computes them. A window that starts at frame 0 or ends at the item's last frame needs no
  context on that side: it sees the same sequence edge as the full call.
* **bucket**: a static shape: `(batch, length)` windows of a vocoder, a padded length of a SoVITS stage, a KV-cache
  capacity and a number of rows of the T2S step.
* **ladder**: the buckets one varying axis can take, ascending; a size is padded (or its rows grouped) up to the
  smallest bucket that holds it (`Ladder.fit`).
* **capture**: the compiled (and, on CUDA, graph-captured) callable of one bucket.

The planner covers `[0, T)` with windows of one length from the bucket set, the first starting at 0, the last
ending at T, spaced so that consecutive kept parts meet. An item shorter than the smallest window gets no
window; the caller runs it unchunked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

MIN_KEPT_FRAMES = 1  # a window must keep at least this many frames beyond its two contexts
SMALLEST_DEFAULT_KEPT = 16  # default windows go down to this many kept frames: short utterances replay graphs too


@dataclass(frozen=True)
class Ladder:
    """The buckets of one axis, ascending: a size `n` is served by the smallest bucket >= n."""

    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.sizes or list(self.sizes) != sorted(set(self.sizes)) or self.sizes[0] < 1:
            raise ValueError(f"a ladder needs distinct ascending sizes >= 1, got {self.sizes}")

    @property
    def largest(self) -> int:
        return self.sizes[-1]

    def fit(self, n: int) -> int | None:
        """The smallest bucket >= n, or None when n is past the largest."""
        return next((size for size in self.sizes if size >= n), None)

    def ending_at(self, largest: int) -> "Ladder":
        """This ladder's sizes below `largest`, then `largest` itself: a ladder that serves up to exactly a limit."""
        return Ladder((*(size for size in self.sizes if size < largest), largest))

    @classmethod
    def powers_of_two(cls, smallest: int, largest: int) -> "Ladder":
        """smallest, 2 * smallest, 4 * smallest, ... up to `largest`."""
        return cls(tuple(smallest << i for i in range(int(math.log2(largest // smallest)) + 1)))

    @classmethod
    def half_octaves(cls, smallest: int, largest: int, multiple: int = 8) -> "Ladder":
        """smallest * 2**(k/2), each rounded up to a `multiple`, up to the first that holds `largest`: at most ~41%
        padding."""
        sizes, k = [], 0
        while not sizes or sizes[-1] < largest:
            size = multiple * math.ceil(smallest * 2 ** (k / 2) / multiple)
            if not sizes or size > sizes[-1]:
                sizes.append(size)
            k += 1
        return cls(tuple(sizes))


@dataclass(frozen=True)
class Bucket:
    """A static shape: `batch` windows of `length` mel frames."""

    batch: int
    length: int


@dataclass(frozen=True)
class Window:
    """Frames `[start, stop)` of item `item` go in; the output of frames `[keep_start, keep_stop)` is kept."""

    item: int
    start: int
    stop: int
    keep_start: int
    keep_stop: int


@dataclass(frozen=True)
class BucketSet:
    """Window lengths (ascending) and, per length, the batch sizes captured for it.

    A length gets batch sizes 1, 2, 4, ... up to `max_batch`, but never more frames per call than the longest
    window: memory per call stays bounded by one largest window, and only short windows (where a call is
    launch-bound) are batched.
    """

    lengths: tuple[int, ...]
    context: int
    max_batch: int = 1

    def __post_init__(self) -> None:
        if not self.lengths:
            raise ValueError("buckets must name at least one window length")
        if list(self.lengths) != sorted(set(self.lengths)):
            raise ValueError(f"bucket lengths must be distinct and ascending, got {self.lengths}")
        if self.lengths[0] < 2 * self.context + MIN_KEPT_FRAMES:
            raise ValueError(
                f"bucket length {self.lengths[0]} leaves no kept frames between two contexts of "
                f"{self.context} frames: every window length must be >= {2 * self.context + MIN_KEPT_FRAMES}"
            )

    @classmethod
    def from_chunk_size(cls, chunk_size: int, context: int, max_batch: int) -> "BucketSet":
        """Windows keeping `chunk_size`, `chunk_size/2`, `/4`, ... frames, and finally 16 (or `chunk_size` if
        smaller): every input at least `16 + 2 * context` frames long is served by captured shapes."""
        smallest = min(chunk_size, SMALLEST_DEFAULT_KEPT)
        kept = [chunk_size]
        while kept[-1] // 2 > smallest:
            kept.append(kept[-1] // 2)
        kept.append(smallest)
        return cls(tuple(sorted({k + 2 * context for k in kept})), context, max_batch)

    def batches(self, length: int) -> tuple[int, ...]:
        """Batch sizes captured for windows of `length` frames, ascending."""
        return Ladder.powers_of_two(1, min(self.max_batch, max(1, self.lengths[-1] // length))).sizes

    def buckets(self) -> list[Bucket]:
        """Every captured shape, largest (most frames) first: the order in which warm-up captures them."""
        shapes = [Bucket(b, n) for n in self.lengths for b in self.batches(n)]
        return sorted(shapes, key=lambda s: (s.batch * s.length, s.length), reverse=True)

    def default_cost(self) -> dict[int, float]:
        """Relative cost of one window per length: its frames plus a fixed per-call overhead of one context."""
        return {n: float(n + 2 * self.context) for n in self.lengths}


def plan(
    buckets: BucketSet,
    *,
    keep: tuple[int, int],
    span: tuple[int, int],
    total: int | None,
    item: int = 0,
    cost: Mapping[int, float] | None = None,
) -> list[Window] | None:
    """Cheapest windows (all of one length) inside `span` whose kept parts tile `keep` exactly.

    `total` is the item's full length when known (a window ending there needs no right context); `None` while
    streaming. Returns None when no window length fits (the span is shorter than every window).
    """
    cost = cost or buckets.default_cost()
    options = [w for n in buckets.lengths if (w := _place(n, buckets.context, keep, span, total, item))]
    if not options:
        return None
    return min(options, key=lambda ws: (len(ws) * cost[ws[0].stop - ws[0].start], len(ws)))


def _place(length: int, ctx: int, keep, span, total, item) -> list[Window] | None:
    keep_start, keep_stop = keep
    first = max(0, keep_start - ctx)  # the first window starts here: at frame 0 it needs no context
    last = keep_stop + ctx if total is None else min(total, keep_stop + ctx)  # the last window ends here
    if first < span[0] or last > span[1]:
        raise ValueError(f"span {span} lacks the context needed to keep frames {keep}")
    reach = last - first
    if reach <= length:
        start = min(first, span[1] - length)
        if start < max(span[0], last - length):
            return None
        starts = [start]
    else:
        n = 1 + math.ceil((reach - length) / (length - 2 * ctx))
        starts = [first + round(i * (reach - length) / (n - 1)) for i in range(n)]
    return _keep_parts(starts, length, ctx, keep, total, item)


def _keep_parts(starts: Sequence[int], length: int, ctx: int, keep, total, item) -> list[Window]:
    """Split `keep` between consecutive windows at the middle of the frames both compute exactly."""
    exact = [(s if s == 0 else s + ctx, s + length if s + length == total else s + length - ctx) for s in starts]
    cuts = [keep[0]] + [(exact[i + 1][0] + exact[i][1]) // 2 for i in range(len(starts) - 1)] + [keep[1]]
    return [Window(item, s, s + length, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]


def group(windows: Sequence[Window], buckets: BucketSet) -> list[tuple[Bucket, list[Window]]]:
    """Pack windows of equal length into captured batch sizes, largest first, never padding a batch."""
    by_length: dict[int, list[Window]] = {}
    for w in windows:
        by_length.setdefault(w.stop - w.start, []).append(w)
    calls = []
    for length, pending in by_length.items():
        sizes = buckets.batches(length)
        while pending:
            b = max(s for s in sizes if s <= len(pending))
            calls.append((Bucket(b, length), pending[:b]))
            pending = pending[b:]
    return calls
