"""Where upstream's streaming T2S decode (`infer_panel_naive(streaming_mode=True)`) cuts its token chunks, as a rule
over the tokens alone, so a decode that reads its tokens every few steps yields exactly upstream's chunks.

Upstream (docs: gpt-sovits-upstream.md 2.3, 3.2) counts the tokens since the last cut. Without a mute-similarity matrix
(api_v2's `streaming_mode` 3) it yields the last `chunk_length` tokens whenever that many have come. With one (mode 2)
it waits for `chunk_length + 2` tokens, scores each token since the last cut by its similarity to silence (minus the
threshold; negative scores set to -1; each score plus its successor's), and when the best score is >= 0 at an
index i >= chunk_length - 1 it yields every token since the last cut but moves the cut only past token i (the next
chunk repeats the tokens after it). At the stop it yields what follows the cut (None if nothing), the EOS token
dropped, marked last.
"""

from __future__ import annotations

import torch

CHECK_TOKENS = 2  # upstream's check_token_num: tokens past chunk_length before a mute cut is looked for
THRESHOLD = 0.3  # upstream's default chunk_split_thershold


class Chunker:
    """Fed a decode's tokens one by one (`step`), returns the chunks upstream yields at that step: a list of
    (tokens or None, last). `prompt`: the prompt's tokens (upstream's y starts with them); `mute`: the
    mute-similarity matrix (one score per token id) or None; `threshold`: upstream's chunk_split_thershold."""

    def __init__(self, prompt: list[int], chunk_length: int, mute: torch.Tensor | None,
                 threshold: float = THRESHOLD) -> None:
        self.y, self.cut, self.counter = list(prompt), len(prompt), 0
        self.chunk_length, self.threshold = chunk_length, threshold
        self.mute = None if mute is None else mute.detach().cpu()  # the same elementwise arithmetic, no host syncs

    def step(self, token: int, stop: bool = False, eos: bool = False) -> list[tuple[list[int] | None, bool]]:
        self.counter += 1
        self.y.append(token)
        if stop:
            if eos:
                self.y.pop()
                self.counter -= 1
            return [(self.y[self.cut:] if self.cut < len(self.y) else None, True)]
        if self.mute is not None and self.counter >= self.chunk_length + CHECK_TOKENS:
            score = self.mute[torch.tensor(self.y[self.cut:])] - self.threshold
            score[score < 0] = -1
            score[:-1] = score[:-1] + score[1:]
            best = int(score.argmax())
            if score[best] >= 0 and best + 1 >= self.chunk_length:
                chunk = self.y[self.cut:]
                self.counter -= best + 1
                self.cut += best + 1
                return [(chunk, False)]
        elif self.mute is None and self.counter >= self.chunk_length:
            chunk = self.y[len(self.y) - self.counter:]
            self.cut += self.counter
            self.counter = 0
            return [(chunk, False)]
        return []
