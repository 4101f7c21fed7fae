"""A thread-safe least-recently-used store bounded by the bytes of what it holds: the server's prepared voices and
its texts' segments."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import torch

V = TypeVar("V")


def tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class ByteLRU(Generic[V]):
    """At most `budget` bytes of values (each one's `size`), the least recently used dropped first. An item larger
    than the budget is kept alone (`keep_oversized`) or not kept at all."""

    def __init__(self, budget: int, size: Callable[[V], int], keep_oversized: bool) -> None:
        self.budget, self.size, self.keep_oversized = budget, size, keep_oversized
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> V | None:
        """The value under `key`, now the most recent, or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: V) -> None:
        """Keep `value` under `key` as the most recent (replacing what was there)."""
        size = self.size(value)
        if size > self.budget and not self.keep_oversized:
            return
        with self._lock:
            self._drop(key)
            self._items[key] = (value, size)
            self._used += size
            while self._used > self.budget and len(self._items) > 1:
                self._used -= self._items.popitem(last=False)[1][1]

    def discard(self, match: Callable[[Hashable], bool]) -> None:
        """Drop every value whose key `match`es."""
        with self._lock:
            for key in [k for k in self._items if match(k)]:
                self._drop(key)

    def _drop(self, key: Hashable) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._used -= item[1]
