"""The server's byte-bounded LRU: the least recently used goes first, an oversized item is kept alone or not at all,
replacing and discarding keep the byte count right."""

from __future__ import annotations

from tts_compile.serve.lru import ByteLRU


def test_least_recently_used_goes_first_within_the_budget() -> None:
    lru = ByteLRU(10, len, keep_oversized=False)
    lru.put("a", "xxxx")
    lru.put("b", "xxxx")
    assert lru.get("a") == "xxxx"  # now the most recent
    lru.put("c", "xxxx")  # 12 bytes: b, the least recent, goes
    assert lru.get("b") is None and lru.get("a") == "xxxx" and lru.get("c") == "xxxx"
    lru.put("a", "x")  # replaced: 5 bytes held, room for one more of 4
    lru.put("d", "xxxx")
    assert len(lru) == 3


def test_an_oversized_item_is_kept_alone_or_not_at_all() -> None:
    skip, keep = ByteLRU(3, len, keep_oversized=False), ByteLRU(3, len, keep_oversized=True)
    for lru in (skip, keep):
        lru.put("small", "xx")
        lru.put("big", "xxxxx")
    assert skip.get("big") is None and skip.get("small") == "xx"
    assert keep.get("big") == "xxxxx" and len(keep) == 1


def test_discard_drops_matching_keys_and_frees_their_bytes() -> None:
    lru = ByteLRU(8, len, keep_oversized=False)
    lru.put(("voice", "a", 1), "xxxx")
    lru.put(("voice", "b", 1), "xxxx")
    lru.discard(lambda key: key[1] == "a")
    lru.put(("voice", "c", 1), "xxxx")  # fits: a's bytes were freed
    assert lru.get(("voice", "a", 1)) is None and len(lru) == 2
