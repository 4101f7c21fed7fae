"""The engine's T2S decode: the segments of many requests as rows of one batch that changes every few steps.

A pool of rows, each with its own KV cache row (a slot), position, step, sampling parameters and seed, all device
tensors. A segment joins by a prefill of its prefix (prompt phones and segment phones with their BERT features, then
the prompt's semantic tokens) into a free slot; a step decodes one token for every running row, whichever slot it
holds: the step's rows are a list of slots (`order`), padded to a rows bucket with a scratch slot, and one CUDA graph
per rows bucket serves every mix of rows and parameters. Nothing moves when rows join or leave.

The prefixes that join in one round are prefilled together: each padded to its length bucket (its padding masked:
never attended, its logits read at the real last position), those of one bucket in calls of that bucket's fixed
number of rows (`prefill_rows`: up to `PREFILL_ROWS`, `PREFILL_POSITIONS` positions a call), missing rows written to
the scratch slot. A prefill is launch-bound (about 1.5 ms on an H200 for 96 positions or 8 x 184: benchmarks/engine.py),
so eight arrivals cost about what one did. One CUDA graph per length bucket serves every set of prefixes; a step has
two graphs per rows bucket, with and without the top-p pass (chosen per round: no running row with top_p < 1, no
pass), which give the same tokens.

Batch invariance: a row's prefill depends on its own prefix (and length bucket) only: the call's shape is fixed per
bucket, and every position's arithmetic is the same whichever row of the call it is in; its step arithmetic does not
depend on the other rows (`t2s_decode_step(..., invariant=True)`: per-row tensor-core tiles, per-row attention,
per-row sampling) and its noise is a function of its own seed and step (`sampling`). So a request's tokens are the
same alone or amid any others; tested bit for bit on the CPU in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..core.buckets import Ladder
from ..core.guard import InputError
from ..core.rng import own_rng
from ..core.runner import Runner
from ..gpt_sovits.kernels.t2s_decode import decode_step_reference, flatten, prefix_visible, stack, t2s_decode_step
from ..gpt_sovits.kernels.t2s_sample import Embedding
from ..gpt_sovits.t2s import MAX_STEPS, PROBE, compare_logits, layer_weights, probe_request
from .request import Params
from .sampling import counter_exponential, sample_rows

PREFILL_ROWS = 8  # prefixes of one length bucket prefilled in one call at most
PREFILL_POSITIONS = 1536  # positions of one prefill call at most (rows x length bucket), so long buckets take fewer


@dataclass(frozen=True)
class Prefix:
    """A row to start: its phones (L,) with their BERT features (1024, L), the prompt's tokens (Q,), the request's
    parameters and the row's seed."""

    phones: torch.Tensor
    bert: torch.Tensor
    prompt: torch.Tensor
    params: Params
    seed: int

    @property
    def positions(self) -> int:
        return self.phones.shape[0] + self.prompt.shape[0]


class RowPool:
    """Device state of `rows` decoding rows, one KV cache row (`capacity` positions) each, plus a scratch row that
    the padding of a rows bucket writes to."""

    def __init__(self, model: nn.Module, rows: int, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        layers, dim, heads = len(model.h.layers), model.model_dim, model.num_head
        vocab = model.ar_predict_layer.out_features
        n = rows + 1
        self.rows, self.capacity, self.scratch = rows, capacity, rows
        self.k = torch.zeros(layers, n, heads, capacity, dim // heads, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.logits = torch.zeros(n, vocab, dtype=dtype, device=device)
        self.seen = torch.zeros(n, vocab, dtype=torch.bool, device=device)
        self.tokens = torch.zeros(n, MAX_STEPS, dtype=torch.long, device=device)
        zeros = torch.zeros(n, dtype=torch.long, device=device)
        self.step, self.prefix, self.prompt, self.seed, self.stop_at = (zeros.clone() for _ in range(5))
        self.max_steps = torch.ones_like(zeros)
        self.done = torch.zeros(n, dtype=torch.bool, device=device)
        self.top_k = torch.ones_like(zeros)
        self.top_p, self.temperature, self.penalty = (torch.ones(n, device=device) for _ in range(3))
        self.order = torch.full((rows,), self.scratch, dtype=torch.long, device=device)  # the step's rows' slots
        self.start = torch.zeros(rows, dtype=torch.long, device=device)  # every row attends from its column 0
        position = model.ar_audio_position
        self.embedding = Embedding(model.ar_audio_embedding.word_embeddings.weight,
                                   position.pe.to(device=device, dtype=dtype).clone(), position.alpha,
                                   position.x_scale)

    @property
    def bytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


def slot_bytes(model: nn.Module, capacity: int, dtype: torch.dtype) -> int:
    """Bytes of one row's KV cache."""
    return 2 * len(model.h.layers) * model.model_dim * capacity * torch.empty(0, dtype=dtype).element_size()


class PrefillInput:
    """The static input of a prefill graph of `rows` prefixes of `length` positions: each written in front of its
    row, with its sizes and slot (rows left empty: one position, the scratch slot)."""

    def __init__(self, rows: int, length: int, dtype: torch.dtype, device: torch.device) -> None:
        self.rows = rows
        self.phones = torch.zeros(rows, length, dtype=torch.long, device=device)
        self.bert = torch.zeros(rows, 1024, length, dtype=dtype, device=device)
        self.prompt = torch.zeros(rows, length, dtype=torch.long, device=device)
        self.sizes = torch.zeros(rows, 3, dtype=torch.long, device=device)  # phones, phones + prompt, slot

    def load(self, prefixes: list[Prefix], slots: list[int], scratch: int) -> None:
        for row, prefix in enumerate(prefixes):
            self.phones[row, : len(prefix.phones)] = prefix.phones
            self.bert[row, :, : len(prefix.phones)] = prefix.bert
            self.prompt[row, : len(prefix.prompt)] = prefix.prompt
        sizes = [[len(p.phones), p.positions, slot] for p, slot in zip(prefixes, slots)]
        self.empty(scratch, sizes)

    def empty(self, scratch: int, sizes: list[list[int]] = ()) -> None:
        """`sizes` for the first rows, the others left empty."""
        sizes = [*sizes, *[[1, 1, scratch]] * (self.rows - len(sizes))]
        self.sizes.copy_(to_device([v for row in sizes for v in row], self.sizes.device).view(self.rows, 3),
                         non_blocking=True)


def to_device(values: list, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Host numbers for an asynchronous copy to `device`: pinned memory on CUDA, so the copy does not wait for
    the work queued before it (the loop thread keeps queueing while the GPU runs)."""
    host = torch.tensor(values, dtype=dtype)
    return host.pin_memory() if device.type == "cuda" else host


class BatchedT2S:
    """Prefill into slots, steps over the running rows (captured per bucket on CUDA), stop flags."""

    def __init__(self, model: nn.Module, rows: int, capacity: int, runner: Runner, kernels: bool) -> None:
        param = next(model.parameters())
        self.model, self.runner, self.kernels = model, runner, kernels
        self.layers = [layer_weights(layer) for layer in model.h.layers]
        self.flat = flatten(self.layers)
        self.heads = model.num_head
        self.pool = RowPool(model, rows, capacity, param.dtype, param.device)
        self.buckets = Ladder.powers_of_two(1, rows).ending_at(rows)
        self.lengths = Ladder.half_octaves(32, capacity).ending_at(capacity)
        self.inputs = {n: PrefillInput(min(PREFILL_ROWS, rows, max(1, PREFILL_POSITIONS // n)), n, param.dtype,
                                       param.device) for n in self.lengths.sizes}
        self.free = list(range(rows))
        self.bucket = 0  # the rows bucket of the current `order`

    @property
    def eos(self) -> int:
        return self.model.EOS

    def check(self, prefix: Prefix) -> None:
        """Raise InputError (a ValueError) when `prefix` does not fit a row's KV cache: the text is too long."""
        if prefix.positions >= self.pool.capacity:
            raise InputError(f"the prefix of {prefix.positions} positions ({prefix.phones.shape[0]} phones, "
                             f"{prefix.prompt.shape[0]} prompt tokens) does not fit a row's KV cache of "
                             f"{self.pool.capacity}")

    def prefill(self, prefixes: list[Prefix]) -> list[int]:
        """Start a row for each prefix: prefilled into free slots, which it returns in order; those of one length
        bucket together (a call per `prefill_rows` of them)."""
        for prefix in prefixes:
            self.check(prefix)
        if len(prefixes) > len(self.free):
            raise ValueError(f"{len(prefixes)} prefixes for {len(self.free)} free rows")
        slots = [self.free.pop(0) for _ in prefixes]
        buckets: dict[int, list[int]] = {}
        for i, prefix in enumerate(prefixes):
            buckets.setdefault(self.lengths.fit(prefix.positions), []).append(i)
        try:
            for length, members in buckets.items():
                given = self.inputs[length]
                for first in range(0, len(members), given.rows):
                    call = members[first: first + given.rows]
                    given.load([prefixes[i] for i in call], [slots[i] for i in call], self.pool.scratch)
                    self._run(("prefill", length), lambda: self._prefill(length))
            self._start(prefixes, slots)
        except Exception:
            self.free[:0] = slots  # the rows never started
            raise
        return slots

    def _start(self, prefixes: list[Prefix], slots: list[int]) -> None:
        """The rows' own state: position, step, parameters, seed, the prompt's tokens as seen (a copy per field)."""
        pool, device = self.pool, self.pool.step.device
        index = to_device(slots, device).to(device, non_blocking=True)
        longs = {"step": [0] * len(slots), "prefix": [p.positions for p in prefixes],
                 "prompt": [len(p.prompt) for p in prefixes], "seed": [p.seed for p in prefixes],
                 "stop_at": [0] * len(slots), "top_k": [p.params.top_k for p in prefixes],
                 "max_steps": [min(p.params.max_tokens, MAX_STEPS, pool.capacity - p.positions) for p in prefixes]}
        floats = {"top_p": [p.params.top_p for p in prefixes], "temperature": [p.params.temperature for p in prefixes],
                  "penalty": [p.params.repetition_penalty for p in prefixes]}
        values = to_device([v for name in longs for v in longs[name]], device).to(device, non_blocking=True)
        for i, name in enumerate(longs):
            getattr(pool, name).index_copy_(0, index, values[i * len(slots): (i + 1) * len(slots)])
        values = to_device([v for name in floats for v in floats[name]], device, torch.float32)
        values = values.to(device, non_blocking=True)
        for i, name in enumerate(floats):
            getattr(pool, name).index_copy_(0, index, values[i * len(slots): (i + 1) * len(slots)])
        pool.done.index_fill_(0, index, False)
        pool.seen.index_fill_(0, index, False)
        rows = torch.cat([torch.full_like(p.prompt, slot) for p, slot in zip(prefixes, slots)])
        pool.seen.index_put_((rows.to(device), torch.cat([p.prompt for p in prefixes]).to(device)),
                             torch.ones((), dtype=torch.bool, device=device))

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def arrange(self, slots: list[int]) -> None:
        """The running rows of the next steps, in this order, padded to their rows bucket with the scratch slot."""
        self.bucket = self.buckets.fit(len(slots))
        order = slots + [self.pool.scratch] * (self.bucket - len(slots))
        self.pool.order[: self.bucket].copy_(to_device(order, self.pool.order.device), non_blocking=True)

    def steps(self, count: int, nucleus: bool) -> None:
        """`count` decode steps of the arranged rows (`nucleus`: with the top-p pass)."""
        for _ in range(count):
            self._run(("step", self.bucket, nucleus), lambda: self._step(self.bucket, nucleus))

    def capture(self) -> list[str]:
        """Capture every step and prefill graph (at start-up, largest first) while no row runs: what they write
        lands in the scratch slot, in free slots that a prefill resets, and in the prefill inputs. Returns the
        labels captured."""
        self.pool.order.fill_(self.pool.scratch)
        done = []
        for bucket in sorted(self.buckets.sizes, reverse=True):
            for nucleus in (False, True):
                self.runner.capture(("step", bucket, nucleus), lambda: self._step(bucket, nucleus), lambda: None)
                done.append(f"step of {bucket} rows{' with top-p' if nucleus else ''}")
        for length in sorted(self.lengths.sizes, reverse=True):
            self.inputs[length].empty(self.pool.scratch)
            self.runner.capture(("prefill", length), lambda: self._prefill(length), lambda: None)
            done.append(f"prefill of {self.inputs[length].rows} x {length}")
        return done

    def probe(self, upstream: Callable[..., Iterator]) -> int:
        """Verification: a greedy decode of a random request by `upstream` (the model class's own
        `infer_panel_naive`, its logits read from `ar_predict_layer`) and by one engine row; raises
        `VerificationError` at the first step whose logits differ past the tolerance. Returns the steps compared."""
        model, device, steps = self.model, self.pool.logits.device, PROBE["steps"]
        [phones], [bert], prompts = probe_request(model, 1, device, self.pool.logits.dtype)
        prompt = prompts[0]
        [slot] = self.prefill([Prefix(phones, bert, prompt, Params(top_k=1, repetition_penalty=1.0, max_tokens=steps),
                                      0)])
        self.arrange([slot])
        ours, theirs = [], []
        for _ in range(steps):
            ours.append(self.pool.logits[slot: slot + 1].clone())
            self.steps(1, nucleus=False)
        self.release(slot)
        hook = model.ar_predict_layer.register_forward_hook(lambda m, i, out: theirs.append(out.detach().clone()))
        try:
            with own_rng(device):
                list(upstream(phones[None], None, prompt[None], bert[None], top_k=1, top_p=1.0, temperature=1.0,
                              repetition_penalty=1.0, early_stop_num=steps - 1))
        finally:
            hook.remove()
        return compare_logits(ours, theirs, 1, device)

    def _run(self, key: tuple, run) -> None:
        """`run()` as the graph of `key` where the runner captures (a missing graph is captured first), else
        directly."""
        if not self.runner.graphs:
            run()
            return
        if not self.runner.has(key):
            self.runner.capture(key, run, lambda: None)
        self.runner.replay(key)

    def stopped(self, slots: list[int]) -> dict[int, list[int]]:
        """The rows of `slots` that stopped: their tokens before the stop (one host sync)."""
        pool = self.pool
        index = to_device(slots, pool.done.device).to(pool.done.device, non_blocking=True)
        flags = torch.stack([pool.done[index].long(), pool.stop_at[index]]).cpu().tolist()
        finished = [(slot, at) for slot, flag, at in zip(slots, *flags) if flag]
        if not finished:
            return {}
        rows = pool.tokens[torch.tensor([slot for slot, _ in finished]), : max(at for _, at in finished)].cpu()
        return {slot: rows[i, :at].tolist() for i, (slot, at) in enumerate(finished)}

    def progress(self, slots: list[int], steps: list[int]) -> list[list[int]]:
        """The tokens of running rows `slots`, the first `steps` of each (one host copy)."""
        rows = self.pool.tokens[to_device(slots, self.pool.tokens.device), : max(steps)].cpu()
        return [rows[i, :n].tolist() for i, n in enumerate(steps)]

    def _prefill(self, length: int) -> None:
        """The prefixes in `inputs[length]` through the layers at `length` positions, their padding masked: K/V into
        their slots' cache rows, the logits of each one's last real position into its slot's logits."""
        m, pool, given = self.model, self.pool, self.inputs[length]
        n_text, n, slot = given.sizes[:, 0:1], given.sizes[:, 1:2], given.sizes[:, 2]
        index = torch.arange(length, device=given.phones.device)
        text = m.ar_text_position(m.ar_text_embedding(given.phones) + m.bert_proj(given.bert.transpose(1, 2)))
        audio = m.ar_audio_position(m.ar_audio_embedding(given.prompt))
        audio = audio.gather(1, (index[None] - n_text).clamp(min=0)[..., None].expand_as(audio))
        xy = torch.where((index[None] < n_text)[..., None], text, audio)
        columns, rows = index[None, None], index[None, :, None]
        visible = prefix_visible(columns, rows, n_text[..., None]) & (columns < n[..., None])
        k = pool.k.new_zeros(pool.k.shape[0], given.rows, pool.k.shape[2], length, pool.k.shape[4])
        v = torch.zeros_like(k)
        out = stack(self.layers, self.heads, xy, k, v, index, visible[:, None])
        pool.k[:, slot, :, :length], pool.v[:, slot, :, :length] = k, v
        last = out[torch.arange(given.rows, device=out.device), n[:, 0] - 1]
        pool.logits[slot] = m.ar_predict_layer(last)

    def _step(self, bucket: int, nucleus: bool) -> None:
        """One token for every row of `order[:bucket]`: sample from its logits, record, embed, run the layers."""
        pool, s = self.pool, self.pool.order[:bucket]
        step = pool.step[s]
        q = counter_exponential(pool.seed[s], step, pool.logits.shape[1])
        token, stop = sample_rows(pool.logits[s], pool.seen[s], q, step, pool.top_k[s], pool.top_p[s],
                                  pool.temperature[s], pool.penalty[s], self.eos, nucleus)
        stop = stop | (step + 1 >= pool.max_steps[s])
        first = stop & ~pool.done[s]
        pool.stop_at[s] = torch.where(first, step, pool.stop_at[s])
        pool.done[s] = pool.done[s] | stop
        pool.tokens[s, step.clamp(max=MAX_STEPS - 1)] = token
        pool.seen.index_put_((s, token), torch.ones_like(stop))  # a device value: capturable
        emb = pool.embedding
        audio_position = (pool.prompt[s] + step).clamp(max=emb.pe.shape[1] - 1)
        x = F.embedding(token, emb.weight) * emb.x_scale + emb.alpha * emb.pe[0, audio_position]
        pos = (pool.prefix[s] + step).clamp(max=pool.capacity - 1)
        predict = self.model.ar_predict_layer
        if self.kernels:
            logits = t2s_decode_step(x, pool.k, pool.v, pos, pool.start[:bucket], s, *self.flat, predict.weight,
                                     predict.bias, True)
        else:
            logits = decode_step_reference(x, pool.k, pool.v, pos, pool.start[:bucket], s, self.layers,
                                           predict.weight, predict.bias)
        pool.logits[s] = logits
        pool.step[s] = step + 1
