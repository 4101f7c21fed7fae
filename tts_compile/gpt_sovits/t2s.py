"""`optimize_t2s`: GPT-SoVITS's autoregressive T2S decode with a static KV cache and a captured decode step.

Upstream decodes one token per Python iteration: 24 layers of small launches, K/V grown with `torch.cat`, ~89 tok/s
on an H100. Here the K/V cache is preallocated (one capacity bucket per request length), and one decode step
(sample the next token on the GPU, embed it, run the layers writing K/V in place, project the logits) is one CUDA
graph; the host replays it and reads the EOS flags once every `CHECK_EVERY` steps. The layers of the step are
`tts_compile::t2s_decode_step` (Triton kernels, five launches a layer: 2090 vs 838 tok/s with torch ops on an
H100; `t2s_kernels`), and the sampling before them one Triton launch (`kernels.t2s_sample`) after torch's own
`exponential_` draw, all of them dependent launches on Hopper (H200: 3309 tok/s for one row, 15482 tok/s aggregate
for 8; benchmarks/results/2026-11-30-h200-t2s.md). In every graph mode (`reduce-overhead`, `max-autotune`,
`cudagraphs`) the step is captured without inductor: inductor made it slower and its tokens less like upstream's
(H100: 745 vs 830 tok/s; benchmarks/results/2026-11-25-h100-t2s.md).

Upstream's semantics, kept term by term (docs: gpt-sovits-upstream.md 2.3-2.5): the EOS column is removed for the
first 11 steps; repetition penalty over prompt + generated tokens (`score < 0 ? score * p : score / p`, applied to
the columns seen so far: the same values upstream's gather/scatter writes); top-p if < 1; division by
`max(temperature, 1e-5)`; top-k; softmax in the model dtype; one `exponential_` draw of shape (B, 1024 or 1025)
per step and `argmax(probs / q)`; stop when the sample or the penalised argmax is EOS, at `early_stop_num` or at the
1500-step cap; upstream's output slicing of `infer_panel_naive` and of `infer_panel_batch_infer`. Steps run past a
stop are undone on the random generator (it is rewound to the state upstream leaves).

Batches (`infer_panel_batch_infer`, up to `MAX_ROWS` rows, in row buckets) follow upstream's batched decode: each
row's text embedded on its own and left-padded to the batch's `max_len` (a row never attends its padding), all rows
stepping together, and a row leaving the batch at its stop. Upstream draws one noise row per unfinished row, so the
step is captured per number of unfinished rows; when a row stops inside a chunk of `CHECK_EVERY` steps while others
go on, the chunk is replayed from its start up to the stop (buffers and generator restored) and the rest decode
without it, so every draw has upstream's shape.

Scope: api_v2's requests of any `batch_size`, with a prompt or without (upstream decodes prompt-free rows one by
one through `infer_panel_naive`), and its streaming modes 2 and 3 (`infer_panel_naive(streaming_mode=True)`): one
row decoded in rounds on a cache of its own, its tokens read once a round and cut into upstream's chunks by
`chunks.Chunker`, the steps after a cut inside a round redone once the caller has the chunk (so its draws, such as
`decode_streaming`'s noise, come where they come in upstream's loop), nothing held between chunks but that cache (a
second stream open at once goes to upstream). A request whose prefix and steps outgrow the largest KV capacity or the
audio position table goes to upstream's own methods (the accelerator stays on).

Verified before it serves: the first call of each rows bucket runs a probe first, a greedy decode of a random request
of that many rows by upstream's own method and by the static-cache step, and compares the logits of every step
(upstream's read from its `ar_predict_layer`) while the two agree on the tokens; a mismatch (a fork whose layers are
not what the step computes, a broken kernel) sends that rows bucket to upstream's methods for good.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..core import verify
from ..core.buckets import Ladder
from ..core.config import OptimizeConfig
from ..core.guard import Uncovered
from ..core.rng import DRAWS, RngState, own_rng
from .chunks import THRESHOLD, Chunker
from .config import PipelineConfig
from .kernels.t2s_decode import (
    flatten,
    prefix_visible,
    stack,
    t2s_decode_step,
    visible_columns,
)
from .kernels.t2s_sample import Embedding, Sampling, sample
from .models.t2s import load_t2s_checkpoint
from .stage import Stage, attach, detach

logger = logging.getLogger(__name__)

MAX_STEPS = 1500  # upstream's cap (60 s of audio per segment)
EARLY_STEPS = 11  # steps that cannot emit EOS (its column is removed)
CHECK_EVERY = 16  # decode steps between two reads of the EOS flags (one host sync each)
CAPACITIES = Ladder((1024, 2048, 4096))  # KV-cache lengths; a request takes the smallest that holds prefix + steps
ROWS = Ladder.powers_of_two(1, 16)  # batch rows of the caches and graphs; a batch takes the smallest that holds it
MAX_ROWS = ROWS.largest
CACHE_BUDGET = 2 << 30  # bytes of KV caches kept across calls; older buckets beyond it are dropped (LRU), graphs too
SNAPSHOT = ("logits", "seen", "step", "x", "position")  # what a replayed chunk restores (the caches are rewritten)
PROBE = {"phones": 7, "prompt": 9, "steps": 2 * CHECK_EVERY}  # the verification probe's request


class _State:
    """Static buffers of one capacity and row bucket: the caches, the current logits, the decoded tokens, EOS flags,
    seen columns, the next input, each row's step counter and first column, the rows still decoding, the offsets
    that a captured step reads, and the embedding it reads."""

    def __init__(self, model: nn.Module, capacity: int, rows: int, dtype: torch.dtype, device: torch.device,
                 stream: bool = False) -> None:
        self.key = (capacity, rows, dtype, device, *(("stream",) if stream else ()))
        layers, dim, heads = len(model.h.layers), model.model_dim, model.num_head
        vocab = model.ar_predict_layer.out_features
        cache = (layers, rows, heads, capacity, dim // heads)
        self.k = torch.zeros(cache, dtype=dtype, device=device)
        self.v = torch.zeros(cache, dtype=dtype, device=device)
        self.logits = torch.zeros(rows, vocab, dtype=dtype, device=device)
        self.x = torch.zeros(rows, dim, dtype=dtype, device=device)  # the next step's input
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # the cache column the next step writes
        self.seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
        self.tokens = torch.zeros(rows, MAX_STEPS, dtype=torch.long, device=device)
        self.eos = torch.zeros(rows, MAX_STEPS, dtype=torch.bool, device=device)
        self.step = torch.zeros(rows, dtype=torch.long, device=device)
        self.start = torch.zeros(rows, dtype=torch.long, device=device)  # each row's first column (its padding)
        self.alive = torch.arange(rows, device=device)  # the rows a step samples: the first `n` entries
        self.slots = torch.arange(rows, device=device)  # row r's cache row: its own
        self.prefix = torch.zeros(1, dtype=torch.long, device=device)  # text + prompt tokens
        self.prompt = torch.zeros(1, dtype=torch.long, device=device)  # prompt tokens (audio position offset)
        self.columns = torch.arange(capacity, device=device)
        position = model.ar_audio_position  # its own table: captured steps read it, whatever upstream later swaps in
        self.embedding = Embedding(model.ar_audio_embedding.word_embeddings.weight,
                                   position.pe.to(device=device, dtype=dtype).clone(), position.alpha, position.x_scale)

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).clone() for name in SNAPSHOT}

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        for name, value in saved.items():
            getattr(self, name).copy_(value)


class T2SAccelerator(Stage):
    """What `optimize_t2s` installed on one `Text2SemanticDecoder` (`model.tts_compile`): the decode, counters, switch.
    Counters beside the guard's and the runner's: decoded steps, host syncs, steps decoded again (a batch row
    stopped inside a chunk)."""

    name = "optimize_t2s"
    argument = "model"
    expected = "GPT-SoVITS Text2SemanticDecoder"
    methods = ("infer_panel_naive", "infer_panel_batch_infer", "infer_panel")
    counters = ("steps", "syncs", "redone")
    parts = ("h", "ar_predict_layer", "ar_audio_embedding", "ar_audio_position", "num_head", "EOS", "model_dim")

    def __init__(self, model: nn.Module, config: PipelineConfig) -> None:
        super().__init__(model, config)
        self.model = model
        self.heads = model.num_head
        self.kernels = config.t2s_kernels and importlib.util.find_spec("triton") is not None
        if config.t2s_kernels and not self.kernels:
            logger.info("optimize_t2s: Triton is not installed; the decode step runs torch ops")
        self._decode_lock = threading.RLock()
        self._streaming_now = False  # a stream holds the stream cache (under the decode lock)
        self.rebuild()

    def rebuild(self) -> None:
        """The layers' weights as the step reads them, from the model's current parameters; no KV caches yet."""
        self.layers = [layer_weights(layer) for layer in self.model.h.layers]
        self.flat = flatten(self.layers)
        self.predict = self.model.ar_predict_layer
        self._states: dict[tuple, _State] = {}  # least recently used first
        self._stream_states: dict[tuple, _State] = {}  # the streams' caches, apart from the others

    @classmethod
    def lacks(cls, module: nn.Module) -> list[str]:
        return [name for name in cls.parts if not hasattr(module, name)]

    # --- upstream's entry points -------------------------------------------------------------------------------

    def infer_panel_naive(self, x, x_lens, prompts, bert_feature, top_k=-100, top_p=100, early_stop_num=-1,
                          temperature=1.0, repetition_penalty=1.35, streaming_mode=False, chunk_length=24,
                          **kwargs) -> Iterator[tuple[torch.Tensor, int]]:
        """Upstream's generator: yields `(y, idx)` once, y = prompt + generated tokens (1, L)."""
        args = (x, x_lens, prompts, bert_feature, top_k, top_p, early_stop_num, temperature, repetition_penalty)
        upstream = self.original["infer_panel_naive"]
        single = x.dim() == 2 and x.shape[0] == 1 and bert_feature.dim() == 3 and bert_feature.shape[0] == 1
        problem = None if single else "not one row of phones and BERT features"
        problem = problem or self._problem([x[0]], prompts, [bert_feature[0]], x.shape[1], top_k, early_stop_num)
        if streaming_mode:
            yield from self._streaming(x, prompts, bert_feature, args, chunk_length, kwargs, problem)
            return
        with DRAWS:  # the decode draws, and may rewind, from the shared generators
            items = self.guard.call("infer_panel_naive", lambda: self._naive(x, prompts, bert_feature, *args[4:]),
                                    lambda: list(upstream(*args, chunk_length=chunk_length, **kwargs)), problem)
        yield from items

    def infer_panel(self, *args, **kwargs) -> tuple[torch.Tensor, int]:
        """Upstream's `infer_panel`: the first (only) item of `infer_panel_naive`."""
        return next(self.infer_panel_naive(*args, **kwargs))

    def infer_panel_batch_infer(self, x, x_lens, prompts, bert_feature, top_k=-100, top_p=100, early_stop_num=-1,
                                temperature=1.0, repetition_penalty=1.35, **kwargs) -> tuple[list, list]:
        """Upstream's batched decode: `([y_row (L,)], [idx])`, rows left-padded to `max_len` (TTS.run's keyword).
        Without prompts upstream decodes row by row through `infer_panel_naive`, which answers here."""
        args = (x, x_lens, prompts, bert_feature, top_k, top_p, early_stop_num, temperature, repetition_penalty)
        lengths = [len(row) for row in x] if isinstance(x, (list, tuple)) else []
        width = int(kwargs.get("max_len", max(lengths, default=0)))
        problem = "not a list of phone rows" if not lengths else "no prompts" if prompts is None else \
            "x_lens differ from the rows" if x_lens is not None and [int(n) for n in x_lens] != lengths else \
            self._problem(x, prompts, bert_feature, width, top_k, early_stop_num)
        with DRAWS:
            return self.guard.call("infer_panel_batch_infer", lambda: self._batch(x, prompts, bert_feature, width,
                                                                                  *args[4:]),
                                   lambda: self.original["infer_panel_batch_infer"](*args, **kwargs), problem)

    def _naive(self, x, prompts, bert, top_k, top_p, early_stop_num, temperature,
               penalty) -> list[tuple[torch.Tensor, int]]:
        [(tokens, idx, eos)] = self._run([x[0]], prompts, [bert[0]], x.shape[1], top_k, top_p, early_stop_num,
                                         temperature, penalty)
        generated = tokens[None, : idx + (0 if eos else 1)]
        if prompts is None:  # upstream's prompt-free decode: int32 tokens, idx 0
            return [(generated.to(torch.int32), 0)]
        return [(torch.cat((prompts, generated.to(prompts.dtype)), dim=1), idx)]

    def _batch(self, x, prompts, bert, width, top_k, top_p, early_stop_num, temperature,
               penalty) -> tuple[list, list]:
        rows = self._run(x, prompts, bert, width, top_k, top_p, early_stop_num, temperature, penalty)
        # upstream keeps y[:-1] on EOS and on early stop alike
        return ([torch.cat((prompt, tokens[:idx].to(prompt.dtype))) for prompt, (tokens, idx, _) in zip(prompts, rows)],
                [idx for _, idx, _ in rows])

    # --- the decode ----------------------------------------------------------------------------------------------

    def _problem(self, x, prompts: torch.Tensor | None, bert, width: int, top_k: Any,
                 early_stop_num: Any) -> str | None:
        """Why a call is not for the static-cache decode: it takes rows of phones (L_i,) with BERT features
        (1024, L_i), one prompt row each or none at all, at most `MAX_ROWS`, padded to `width`, a top-k sampler, a
        prefix and steps within the largest KV capacity and the audio position table, a verified rows bucket."""
        if not (prompts is None or (prompts.dim() == 2 and prompts.shape[0] == len(x))):
            return "not one prompt row per row"
        if not 0 < len(x) == len(bert) <= MAX_ROWS:
            return f"{len(x)} rows, {len(bert)} BERT features: expected 1..{MAX_ROWS} of each"
        if not (isinstance(top_k, int) and top_k >= 1):
            return f"top_k={top_k!r}: the decode samples top-k with k >= 1"
        if not all(row.dim() == 1 and feature.dim() == 2 and feature.shape[1] == len(row) <= width
                   for row, feature in zip(x, bert)):
            return f"rows that are not (phones,) with BERT features (1024, phones) within max_len={width}"
        if not isinstance(early_stop_num, int) or early_stop_num < -1:
            return f"early_stop_num={early_stop_num!r}: expected an int >= -1"
        return self._size_problem(width, 0 if prompts is None else prompts.shape[1], _steps(early_stop_num)) or (
            f"rows bucket {ROWS.fit(len(x))} failed verification" if ROWS.fit(len(x)) in self._rejected else None)

    def _size_problem(self, width: int, n_prompt: int, steps: int) -> str | None:
        if CAPACITIES.fit(width + n_prompt + steps) is None:
            return (f"{width} phones + {n_prompt} prompt tokens + {steps} steps exceed the largest KV capacity "
                    f"{CAPACITIES.largest}")
        if n_prompt + steps > self.model.ar_audio_position.pe.shape[1]:
            return (f"{n_prompt} prompt tokens + {steps} steps exceed the "
                    f"{self.model.ar_audio_position.pe.shape[1]} audio positions of ar_audio_position.pe")
        return None

    def _streaming(self, x, prompts, bert, args: tuple, chunk_length: Any, kwargs: dict,
                   problem: str | None) -> Iterator[tuple[torch.Tensor | None, bool]]:
        """Upstream's streaming generator, `(chunk (1, n) or None, last)`, through the static-cache decode: the chunks
        cut where upstream cuts them (`chunks.Chunker`), read every `CHECK_EVERY` steps. A failure before the first
        chunk is answered by upstream's own stream from the same random state; one after it propagates (the chunks
        given cannot be taken back)."""
        extra = sorted(set(kwargs) - {"mute_emb_sim_matrix", "chunk_split_thershold"})
        if not problem and extra:
            problem = f"keywords {extra}"
        if not problem and (not isinstance(chunk_length, int) or isinstance(chunk_length, bool) or chunk_length < 0):
            problem = f"chunk_length={chunk_length!r}: not an int >= 0"
        mute = kwargs.get("mute_emb_sim_matrix")
        chunker = None if problem else Chunker(
            [] if prompts is None else prompts[0].tolist(), chunk_length,
            mute if isinstance(mute, torch.Tensor) else None, float(kwargs.get("chunk_split_thershold", THRESHOLD)))

        def optimized() -> Iterator[tuple[torch.Tensor | None, bool]]:
            with DRAWS, self._decode_lock:
                if self._streaming_now:
                    raise Uncovered("another stream is open")
                self._streaming_now = True
                generator = RngState(x.device)
            stream = self._stream(x, prompts, bert, args, chunker)
            try:
                first = next(stream)
            except Exception:
                stream.close()
                with DRAWS:
                    generator.restore()
                raise
            return itertools.chain([first], stream)

        yield from self.guard.call("infer_panel_naive", optimized, lambda: self.original["infer_panel_naive"](
            *args, streaming_mode=True, chunk_length=chunk_length, **kwargs), problem)

    def _stream(self, x, prompts, bert, args: tuple, chunker: Chunker) -> Iterator[tuple[torch.Tensor | None, bool]]:
        """One row decoded in rounds on the stage's stream cache (one stream at a time: others go to upstream), each
        round under `DRAWS` and the decode lock, none of them held while the caller has a chunk. A chunk cut inside a
        round has the steps after it undone before it is handed out: what the caller draws with it (upstream's
        `decode_streaming` draws its noise) comes where it comes in upstream's loop, and the steps after it draw
        after it."""
        top_k, top_p, early_stop_num, temperature, penalty = args[4:]
        sampling = Sampling(int(top_k), float(top_p), float(temperature), float(penalty))
        dtype = torch.int32 if prompts is None else prompts.dtype  # upstream's y: prompt-free decodes are int32
        try:
            with DRAWS, self._decode_lock, torch.inference_mode():
                self.follow_weights()
                self._verify_rows(1, bert.dtype)
            rounds = self._stream_rounds(x, prompts, bert, sampling, int(early_stop_num))
            done, chunks = 0, []
            while not chunks or not chunks[-1][1]:
                with DRAWS, self._decode_lock, torch.inference_mode():
                    tokens, end = next(rounds)
                    new, chunks, read = tokens[done:].tolist(), [], len(tokens)
                    for token in new:
                        stop = end is not None and done == end[0]
                        chunks, done = chunker.step(token, stop, stop and end[1]), done + 1
                        if chunks:
                            break
                    if done < read:  # cut inside the round
                        rounds.send(done)
                for chunk, last in chunks:
                    yield (None if chunk is None else torch.tensor([chunk], dtype=dtype, device=x.device)), last
        finally:
            with self._decode_lock:
                self._streaming_now = False

    def _stream_rounds(self, x, prompts, bert, sampling: Sampling, early_stop_num: int):
        """The one-row decode of a stream, a generator: after each round of steps (one host sync) it yields (the
        tokens so far (a view, valid until the next round), (idx, stopped on EOS) once it stopped, else None). Sent
        a step count inside the round, it undoes the steps after it (buffers and generator restored, the steps up to
        it run again) and yields None; the next round starts there."""
        last = _steps(early_stop_num) - 1
        state = self._prefill([x[0]], prompts, [bert[0]], x.shape[1], last + 1, stream=True)
        step = 0
        while True:
            rng, start, saved = RngState(x.device), step, state.snapshot()
            for _ in range(min(CHECK_EVERY, last + 1 - step)):
                self._step(state, sampling, step, 1)
                step += 1
            self.guard.count("steps", step - start)
            self.guard.count("syncs")
            flags = state.eos[0, start:step].cpu()
            hits, end = flags.nonzero(), None
            if len(hits) or step > last:
                stop = start + int(hits[0]) if len(hits) else last
                end = (stop, bool(flags[stop - start]))
                self._rewind(rng, state, start, stop, 1)
            cut = yield state.tokens[0, : step if end is None else end[0] + 1], end
            if cut is None and end is not None:
                return
            if cut is not None:
                self._redo(state, saved, rng, sampling, start, cut, 1)
                step = cut
                yield None

    def _run(self, x, prompts, bert, width, top_k, top_p, early_stop_num, temperature,
             penalty) -> list[tuple[torch.Tensor, int, bool]]:
        """Per row (tokens (steps,), idx, stopped on EOS); on an error the generator is rewound before it
        propagates."""
        sampling = Sampling(int(top_k), float(top_p), float(temperature), float(penalty))
        generator = RngState(x[0].device)
        try:
            with self._decode_lock, torch.inference_mode():
                self.follow_weights()
                self._verify_rows(ROWS.fit(len(x)), bert[0].dtype)
                return self._decode(x, prompts, bert, int(width), sampling, int(early_stop_num))
        except Exception:
            generator.restore()
            raise

    def _verify_rows(self, rows: int, dtype: torch.dtype) -> None:
        """The probe of a rows bucket on its first call (`config.verify`); Uncovered once it failed."""
        if rows in self._rejected:
            raise Uncovered(f"rows bucket {rows} failed verification: {self._rejected[rows]}")
        if not self.config.verify or rows in self._verified:
            return
        started = time.perf_counter()
        try:
            compared = self._probe(rows, dtype)
        except verify.VerificationError as exc:
            self._rejected[rows] = str(exc)
            self.guard.count("rejected")
            logger.warning("optimize_t2s: %s; upstream's methods serve %d-row calls", exc, rows)
            raise Uncovered(f"rows bucket {rows} failed verification") from exc
        finally:
            self.guard.count("verifications")
            self.guard.count("verify_ms", round(1e3 * (time.perf_counter() - started)))
        self._verified.add(rows)
        logger.info("optimize_t2s: %d-row step verified against upstream's logits over %d steps in %.2f s", rows,
                    compared, time.perf_counter() - started)

    def _probe(self, rows: int, dtype: torch.dtype) -> int:
        """A greedy decode of a random `rows`-row request by upstream's method and by the step, own random state;
        raises VerificationError at the first step whose logits differ past the tolerance. Returns the steps
        compared: until the first row stops, or the greedy tokens part at a near-tie."""
        model, device = self.model, self.device
        n, steps = PROBE["phones"], PROBE["steps"]
        x, bert, prompts = probe_request(model, rows, device, dtype)
        greedy = {"top_k": 1, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.0,
                  "early_stop_num": steps - 1}
        ours, theirs = [], []
        with own_rng(device):
            self._decode(x, prompts, bert, n, Sampling(1, 1.0, 1.0, 1.0), steps - 1, record=ours)
            hook = model.ar_predict_layer.register_forward_hook(lambda m, i, out: theirs.append(out.detach().clone()))
            try:
                if rows == 1:
                    list(self.original["infer_panel_naive"](x[0][None], None, prompts, bert[0][None], **greedy))
                else:
                    self.original["infer_panel_batch_infer"](x, torch.tensor([n] * rows), prompts, bert, max_len=n,
                                                             **greedy)
            except Exception as exc:  # noqa: BLE001 - a probe upstream cannot run verifies nothing
                raise verify.VerificationError(f"upstream's decode could not run the {rows}-row probe: "
                                               f"{type(exc).__name__}: {exc}") from exc
            finally:
                hook.remove()
        return compare_logits(ours, theirs, rows, device)

    def _decode(self, x, prompts, bert, width: int, sampling: Sampling, early_stop_num: int,
                record: list[torch.Tensor] | None = None) -> list[tuple[torch.Tensor, int, bool]]:
        """The decode in rounds of steps (one host sync each): per row (tokens, idx, stopped on EOS). With `record`,
        the logits before every step are appended to it (the probe: one host sync per step)."""
        last = _steps(early_stop_num) - 1
        state = self._prefill(x, prompts, bert, width, last + 1)
        alive, ends, step = list(range(len(x))), {}, 0
        while alive:
            rng, start, saved = RngState(x[0].device), step, state.snapshot() if len(alive) > 1 else None
            for _ in range(min(CHECK_EVERY, last + 1 - step)):
                if record is not None:
                    record.append(state.logits[: len(x)].clone())
                self._step(state, sampling, step, len(alive))
                step += 1
            self.guard.count("steps", step - start)
            self.guard.count("syncs")
            flags = state.eos[alive, start:step].cpu()
            hits = flags.any(dim=0).nonzero()
            if not len(hits) and step <= last:
                continue
            stop = start + int(hits[0]) if len(hits) else last
            stopped = [row for row, flag in zip(alive, flags[:, stop - start].tolist()) if flag or stop == last]
            ends.update({row: (stop, bool(flags[alive.index(row), stop - start])) for row in stopped})
            if len(stopped) == len(alive):
                self._rewind(rng, state, start, stop, len(alive))
                break
            if stop < step - 1:  # the steps after `stop` drew noise for rows that upstream has dropped: redo
                self._redo(state, saved, rng, sampling, start, stop + 1, len(alive))
            alive = [row for row in alive if row not in ends]
            state.alive[: len(alive)].copy_(torch.tensor(alive))
            step = stop + 1
        tokens = state.tokens[: len(x)].clone()
        return [(tokens[row, : ends[row][0] + 1], *ends[row]) for row in range(len(x))]

    def _prefill(self, x, prompts, bert, width: int, steps: int, stream: bool = False) -> _State:
        """Embed the rows like upstream (each row's text on its own, then left-padded to `width`) and run them
        through the layers, filling the cache; logits of their last position."""
        m, batch = self.model, len(x)
        text = [m.ar_text_position(m.ar_text_embedding(row[None]) + m.bert_proj(feature.transpose(0, 1)[None]))[0]
                for row, feature in zip(x, bert)]
        text = torch.stack([F.pad(row, (0, 0, width - row.shape[0], 0)) for row in text])
        xy = text if prompts is None else torch.cat((text, m.ar_audio_position(m.ar_audio_embedding(prompts))), dim=1)
        n_text, n_prompt = width, xy.shape[1] - width
        state = self._state(n_text + n_prompt + steps, batch, xy.dtype, xy.device, stream)
        if n_prompt + steps > state.embedding.pe.shape[1]:
            raise ValueError(f"{n_prompt} prompt tokens + {steps} steps exceed the {state.embedding.pe.shape[1]} "
                             "audio positions of ar_audio_position.pe")
        rows = state.x.shape[0]
        state.start.copy_(torch.tensor([width - len(row) for row in x] + [0] * (rows - batch)))
        columns = state.columns[None, :]
        positions = torch.arange(n_text + n_prompt, device=xy.device)[:, None]
        visible = prefix_visible(columns, positions, n_text)
        visible = visible[None] & (columns >= state.start[:, None, None])  # a row never sees its padding
        xy = F.pad(xy, (0, 0, 0, 0, 0, rows - batch))  # the bucket's spare rows decode zeros, unread
        out = stack(self.layers, self.heads, xy, state.k, state.v, positions[:, 0], visible[:, None])
        state.logits.copy_(self.predict(out[:, -1]))
        state.seen.zero_()
        if prompts is not None:
            state.seen[:batch].scatter_(1, prompts.long(), True)
        state.x.zero_()
        state.eos.zero_()
        state.step.zero_()
        state.alive.copy_(torch.arange(rows))
        state.prefix.fill_(n_text + n_prompt)
        state.prompt.fill_(n_prompt)
        return state

    def _state(self, length: int, batch: int, dtype: torch.dtype, device: torch.device,
               stream: bool = False) -> _State:
        capacity = CAPACITIES.fit(length)
        if capacity is None:
            raise ValueError(f"prefix + steps = {length} exceeds the largest KV-cache capacity {CAPACITIES.largest}")
        if stream:  # kept apart: the others' budget never drops it mid-stream
            key = (capacity, 1, dtype, device, "stream")
            if key not in self._stream_states:
                self._stream_states[key] = _State(self.model, *key[:4], stream=True)
            return self._stream_states[key]
        key = (capacity, ROWS.fit(batch), dtype, device)
        state = self._states.pop(key, None) or _State(self.model, *key)
        self._states[key] = state
        while sum(s.k.nbytes + s.v.nbytes for s in self._states.values()) > CACHE_BUDGET and len(self._states) > 1:
            dropped = next(iter(self._states))
            logger.info("optimize_t2s: dropped the KV cache and graphs of bucket %s (cache budget %d MiB)", dropped,
                        CACHE_BUDGET >> 20)
            del self._states[dropped]
            self.runner.discard(lambda graph: graph[0] == dropped)
        return state

    def _step(self, state: _State, sampling: Sampling, step: int, alive: int) -> None:
        """One decode step of the first `alive` rows of `state.alive`: replayed from its graph where the runner
        captures graphs (CUDA, a graph mode), run directly otherwise."""
        vocab = _vocab(state, step)
        if not self.runner.graphs:
            self._step_body(state, sampling, vocab, alive)
            return
        key = (state.key, sampling, vocab, alive)
        if not self.runner.has(key):
            self._capture(key, state, sampling, vocab, alive)
        self.runner.replay(key)

    def _step_body(self, state: _State, sampling: Sampling, vocab: int, alive: int) -> None:
        """Sample the rows still decoding from the current logits (upstream's `exponential_` draw, one row each),
        record the tokens, embed them, run the layers, write the next logits."""
        q = _noise(state, vocab, alive)
        sample(state.logits, state.seen, q, state.alive[:alive], state.tokens, state.eos, state.step, state.prefix,
               state.prompt, state.position, state.x, state.embedding, self.model.EOS, sampling, fused=self.kernels)
        positions = state.position.expand(state.x.shape[0])  # every row of a left-padded batch writes one column
        if self.kernels:  # Triton on CUDA, the torch layers elsewhere
            logits = t2s_decode_step(state.x, state.k, state.v, positions.contiguous(), state.start, state.slots,
                                     *self.flat, self.predict.weight, self.predict.bias)
        else:
            visible = visible_columns(state.columns, positions, state.start)
            out = stack(self.layers, self.heads, state.x[:, None], state.k, state.v, state.position, visible)
            logits = self.predict(out[:, -1])
        state.logits.copy_(logits)

    def _capture(self, key: tuple, state: _State, sampling: Sampling, vocab: int, alive: int) -> None:
        """Capture one step; buffers and the generator are restored, so the request that triggered it decodes exactly
        as without the capture. The caches need no restoring: the warm-ups write this step's column, rewritten alike
        by the replay, and the next one, rewritten before it is read."""
        saved = {name: getattr(state, name).clone() for name in (*SNAPSHOT, "tokens", "eos")}
        rng = RngState(state.k.device)

        def restore() -> None:
            state.restore(saved)
            rng.restore()

        seconds = self.runner.capture(key, lambda: self._step_body(state, sampling, vocab, alive), restore)
        logger.info("optimize_t2s: captured a decode step (cache %d, %d of %d rows, vocab %d, %s) in %.1f s",
                    state.columns.numel(), alive, state.x.shape[0], vocab, sampling, seconds)

    def _redo(self, state: _State, saved: dict[str, torch.Tensor], rng: RngState, sampling: Sampling, start: int,
              end: int, alive: int) -> None:
        """Undo the round that began at step `start` (buffers and generator back to `saved` and `rng`) and run its
        steps up to `end` again: what the steps after `end` drew is drawn afresh by whatever comes next."""
        state.restore(saved)
        rng.restore()
        for step in range(start, end):
            self._step(state, sampling, step, alive)
        self.guard.count("redone", end - start)

    def _rewind(self, rng: RngState, state: _State, start: int, stop: int, alive: int) -> None:
        """Leave the generator where upstream leaves it: one draw per step up to `stop`, none after."""
        rng.restore()
        for step in range(start, stop + 1):
            _noise(state, _vocab(state, step), alive)


def probe_request(model: nn.Module, rows: int, device: torch.device,
                  dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """The verification probe's random request of `rows` rows (seeded by `rows`): phones (n,) and BERT features
    (1024, n) per row, prompts (rows, q), sized by `PROBE`."""
    gen = torch.Generator().manual_seed(rows)
    n, q = PROBE["phones"], PROBE["prompt"]
    phones = model.ar_text_embedding.word_embeddings.num_embeddings
    x = [torch.randint(0, phones, (n,), generator=gen).to(device) for _ in range(rows)]
    bert = [(0.1 * torch.randn(1024, n, generator=gen)).to(device, dtype) for _ in range(rows)]
    return x, bert, torch.randint(0, model.EOS, (rows, q), generator=gen).to(device)


def compare_logits(ours: list[torch.Tensor], theirs: list[torch.Tensor], rows: int, device: torch.device) -> int:
    """Step by step while every row decodes: the logits within `core.verify`'s tolerance, until the greedy tokens
    part (a near-tie: the logits agreed). Returns the steps compared."""
    compared = 0
    for step, (mine, upstream) in enumerate(zip(ours, theirs)):
        if upstream.shape[0] != rows:
            break
        verify.compare(f"optimize_t2s: logits at step {step} of a {rows}-row probe", mine, upstream, device)
        compared += 1
        if not torch.equal(mine.argmax(dim=-1), upstream.argmax(dim=-1)):
            break
    if not compared:
        raise verify.VerificationError(f"optimize_t2s: a {rows}-row probe compared no step (upstream's logits: "
                                       f"{[tuple(t.shape) for t in theirs[:3]]})")
    return compared


def _steps(early_stop_num: int) -> int:
    """Decode steps at most: upstream stops once (generated tokens) > early_stop_num, unless it is -1."""
    return MAX_STEPS if early_stop_num == -1 else min(MAX_STEPS, max(early_stop_num, 0) + 1)


def _vocab(state: _State, step: int) -> int:
    """Columns a step samples from: EOS's column is left out of the first `EARLY_STEPS` steps."""
    return state.logits.shape[1] - (1 if step < EARLY_STEPS else 0)


def _noise(state: _State, vocab: int, alive: int) -> torch.Tensor:
    """One step's draw, as upstream makes it: an `exponential_` row per row still decoding. The decode and the
    rewind both draw here, so the generator ends where upstream leaves it."""
    return torch.empty(alive, vocab, dtype=state.logits.dtype, device=state.logits.device).exponential_(1)


def layer_weights(layer: nn.Module) -> tuple:
    """(qkv w, b, out w, b, norm1 w, b, eps, ffn1 w, b, ffn2 w, b, norm2 w, b, eps) of a TransformerEncoderLayer."""
    if getattr(layer, "norm_first", False):
        raise TypeError("optimize_t2s: pre-norm layers (norm_first=True) are not GPT-SoVITS's T2S")
    attn = layer.self_attn
    return (attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias, layer.norm1.weight,
            layer.norm1.bias, layer.norm1.eps, layer.linear1.weight, layer.linear1.bias, layer.linear2.weight,
            layer.linear2.bias, layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)


def optimize_t2s(model: nn.Module | str | os.PathLike | Mapping[str, Any], config: OptimizeConfig | None = None,
                 **options: Any) -> nn.Module:
    """Patch an upstream `Text2SemanticDecoder` in place: `infer_panel`, `infer_panel_naive` and
    `infer_panel_batch_infer` keep their signatures and results and decode through `T2SAccelerator`
    (`model.tts_compile`). Returns `model`. Given upstream's T2S checkpoint instead (a `.ckpt` path or its dict),
    the decoder is built from it (`models.t2s.load_t2s_checkpoint`, CPU float32: move it with `.to(device,
    dtype)`); that stand-in's decode is then the eager reference the accelerator falls back to."""
    if not isinstance(model, nn.Module):
        model = load_t2s_checkpoint(model)
    attach(T2SAccelerator, model, config, options)
    return model


def restore_t2s(model: nn.Module) -> nn.Module:
    """Undo `optimize_t2s`: upstream's own decode methods again."""
    return detach(model, T2SAccelerator)
