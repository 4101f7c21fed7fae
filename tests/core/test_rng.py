"""`own_draws`: a thread's own generators give the numbers the default ones give after `torch.manual_seed`, leave the
default generators alone, and hand their state to upstream's code (`upstream_draws`) and take it back."""

from __future__ import annotations

import contextlib
import threading

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.core.rng import own_draws, own_generator, upstream_draws

CPU = torch.device("cpu")


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), before=st.integers(0, 5))
def test_own_draws_give_the_seeds_numbers_and_leave_the_default_generator(seed, before) -> None:
    torch.manual_seed(seed)
    expected = torch.randn(7)
    torch.manual_seed(seed + 1)
    torch.rand(before)
    state = torch.get_rng_state()
    with own_draws(seed, CPU):
        got = torch.randn(7, generator=own_generator(CPU))
        assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(got, expected) and torch.equal(torch.get_rng_state(), state)
    assert own_generator(CPU) is None


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), ours=st.integers(0, 4), theirs=st.integers(1, 4))
def test_upstreams_draws_continue_the_threads_sequence(seed, ours, theirs) -> None:
    """Our draws, then upstream's from the default generator, then ours again: one sequence, as one seeded run."""
    torch.manual_seed(seed)
    expected = torch.rand(ours + theirs + 3)
    torch.manual_seed(seed + 1)
    state = torch.get_rng_state()
    with own_draws(seed, CPU):
        first = torch.rand(ours, generator=own_generator(CPU))
        with upstream_draws():
            middle = torch.rand(theirs)
        last = torch.rand(3, generator=own_generator(CPU))
    assert torch.equal(torch.cat([first, middle, last]), expected)
    assert torch.equal(torch.get_rng_state(), state)


def test_threads_draw_their_own_seeds_numbers_at_once() -> None:
    """Four threads draw in turn (a barrier between each draw), each from its own seed: none sees another's."""
    seeds, rounds = [11, 12, 13, 14], 5
    expected = {s: torch.Generator().manual_seed(s) for s in seeds}
    expected = {s: [torch.rand(3, generator=g) for _ in range(rounds)] for s, g in expected.items()}
    barrier, got = threading.Barrier(len(seeds)), {}

    def draw(seed: int) -> None:
        with own_draws(seed, CPU):
            got[seed] = []
            for _ in range(rounds):
                barrier.wait(timeout=30)
                with upstream_draws() if len(got[seed]) % 2 else contextlib.nullcontext():
                    generator = None if len(got[seed]) % 2 else own_generator(CPU)
                    got[seed].append(torch.rand(3, generator=generator))

    threads = [threading.Thread(target=draw, args=(s,)) for s in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(torch.equal(torch.stack(got[s]), torch.stack(expected[s])) for s in seeds)
