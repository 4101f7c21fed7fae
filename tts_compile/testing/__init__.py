"""Helpers for proving the exactness contract on your own vocoder, in your own test suite.

    from tts_compile.testing import assert_matches_eager
    assert_matches_eager(optimized, mel)            # optimized(mel) == the eager module on mel, within tolerance

`strategies` has hypothesis strategies for mel lengths, window buckets and batch compositions.
"""

from .assertions import TOLERANCE, assert_matches_eager, relative_error

__all__ = ["TOLERANCE", "assert_matches_eager", "relative_error"]
