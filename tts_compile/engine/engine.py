"""`Engine`: many GPT-SoVITS requests at once on one GPU.

One scheduler thread owns the T2S decode: it admits waiting segments into free rows (prefilled together), runs
`CHECK_EVERY` steps over every running row, reads their stop flags once, and hands each request whose segments are
all done to the render workers, which turn tokens into audio (SoVITS decode, or CFM and vocoder) on their own CUDA
streams while the loop goes on. A stream's segments are rendered one by one as each one's tokens are done, a new
stream's first segment ahead of every other render, so its first audio does not wait behind the load; a token-chunk
stream (`streaming`) has its running rows' tokens read every round and each chunk rendered as soon as it is cut,
one render job per stream at a time, its first chunk ahead of the rest; while a stream's first render is queued or
runs, the loop and the renders not begun yet wait for it (`first_alone`). Requests enter through a bounded queue
(full: `QueueFull` at once), carry a deadline and a cancel flag (checked at every scheduling round), and fail alone:
a request's error reaches its own handle and the engine goes on. Every T2S rows bucket is captured before the engine
reports ready.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import queue
import threading
import time
from collections import Counter, deque
from typing import Any, Sequence

import torch
from torch import nn

from ..core.caches import use_cache_dir
from ..core.runner import Execution, Runner
from ..gpt_sovits.t2s import CHECK_EVERY
from ..gpt_sovits.versions import Version
from ..gpt_sovits.versions import version as version_of
from .config import EngineConfig
from .render import Job, Renderer, fragment, render_cfm, render_decode, warm_shapes
from .request import (
    Cancelled,
    EngineClosed,
    Handle,
    Params,
    QueueFull,
    Request,
    Segment,
    Status,
    TokenChunks,
    Voice,
    new_request,
)
from .sampling import row_seed
from .scheduler import schedule
from .streaming import (
    ChunkJob,
    ChunkStream,
    Cutter,
    SegmentChunks,
    longest_chunk,
    mute_similarity,
    render_chunk,
    render_chunk_cfm,
    warm_chunks,
)
from .t2s import BatchedT2S, Prefix, slot_bytes

logger = logging.getLogger(__name__)

STOP, FIRST, NEXT = -1, 0, 1  # render priorities: close, a stream's first segment, the rest in arrival order
HOLD_S = 0.1  # `first_alone`: the longest the T2S loop and later renders wait for a stream's first render at a time
COUNTERS = ("submitted", "rejected", "finished", "failed", "cancelled", "prefills", "steps", "syncs", "renders",
            "row_steps", "decode_s", "render_s")


class Engine:
    """Submit requests from any thread (`submit`, or `await engine.submit(...)`'s handle in asyncio); `close()` ends
    it. Build it from an upstream pipeline (`from_pipeline`) or from the stand-in models (`from_stand_ins`)."""

    def __init__(self, t2s_model: nn.Module, renderer: Renderer, version: Version, config: EngineConfig | None = None,
                 stages: dict[str, Any] | None = None, **options: Any) -> None:
        config = (config or EngineConfig()).replace(**options)
        self.config, self.version, self.renderer = config, version, renderer
        self.stages = stages or {}  # the render stages' optimizers (SoVITS, CFM, vocoder), for their counters
        param = next(t2s_model.parameters())
        self.device, self.dtype = param.device, param.dtype
        rows = min(config.max_rows, max(1, int(config.kv_budget_gib * 2**30 // slot_bytes(
            t2s_model, config.kv_capacity, param.dtype))))
        use_cache_dir(config.cache_dir)
        execution = Execution.of("cudagraphs" if config.compile_mode != "eager" else "eager", self.device)
        kernels = self.device.type == "cuda" and config.t2s_kernels
        self.t2s = BatchedT2S(t2s_model, rows, config.kv_capacity, Runner(execution, self.device), kernels)
        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self._queued: deque[Request] = deque()  # requests with segments waiting for rows
        self._rows: dict[int, tuple[Request, int]] = {}  # slot -> (request, segment)
        self._handles: dict[int, Handle] = {}  # request id -> its handle, until it finishes
        self._cv = threading.Condition()
        self._closing = False
        self._draining = False  # no new requests; those held finish
        # (priority, order, job or None to stop, whether the job holds the loop: `first_alone`)
        self._renders: queue.PriorityQueue[tuple[int, int, Job | ChunkJob | None, bool]] = queue.PriorityQueue()
        self._chunked: dict[int, ChunkStream] = {}  # request id -> a token-chunk stream's chunks
        self._row_steps: dict[int, int] = {}  # slot -> steps decoded since its prefill
        self._mute = mute_similarity(t2s_model) if renderer.chunk else None
        self._render_order = itertools.count()
        self.first_alone = config.first_alone  # an attribute: benchmarks/toggle.py switches it on a running engine
        self._firsts = 0  # streams' first renders queued or running (`first_alone`)
        self._firsts_queued = 0  # of which not picked up by a render worker yet
        self._prepared = 0  # the tokens up to which render buckets are prepared (`prepare`)
        started = time.perf_counter()
        self._warm_up()
        self.startup_s = time.perf_counter() - started
        self._threads = [threading.Thread(target=self._loop, name="tts_compile-engine", daemon=True)]
        self._threads += [threading.Thread(target=self._render_loop, name=f"tts_compile-render-{i}", daemon=True)
                          for i in range(config.render_workers)]
        for thread in self._threads:
            thread.start()
        logger.info("engine: GPT-SoVITS %s, %d rows of %d positions (%.0f MiB of KV caches), ready in %.1f s",
                    version.name, rows, config.kv_capacity, self.t2s.pool.bytes / 2**20, self.startup_s)

    # ------------------------------------------------------------------------------------------------ callers
    def submit(self, voice: Voice, segments: Sequence[Segment], params: Params | None = None,
               stream: bool = False, chunks: TokenChunks | None = None) -> Handle:
        """Queue a request; its `Handle` gives the audio (with `stream`, segment by segment as each is ready: see
        `Handle.chunks`; with `chunks`, a stream in token chunks as they are decoded). Raises `QueueFull` when
        `queue_size` requests are held, `EngineClosed` after `close()`, and `InputError` (a ValueError) for a bad
        request, naming what is wrong."""
        request = new_request(voice, tuple(segments), params or Params(), stream, chunks)
        if request.chunks is not None and self.renderer.chunk is None:
            request.chunks = None  # a synthesizer without decode_streaming: whole segments
        if voice.prompt_bert.device != self.device or voice.prompt_bert.dtype != self.dtype:
            request.voice = voice.to(self.device, self.dtype)
        handle = Handle(request, self.version.sample_rate)
        with self._cv:
            if self._closing or self._draining:
                raise EngineClosed("the engine is closed")
            if len(self._handles) >= self.config.queue_size:
                self.counters["rejected"] += 1
                raise QueueFull(f"the engine holds {self.config.queue_size} requests (queue_size); try again later")
            self._handles[request.id] = handle
            if request.chunks is not None:
                longest = longest_chunk(self.version) if self.version.renderer == "cfm" else None
                self._chunked[request.id] = ChunkStream(request.chunks, self._mute, len(request.segments), longest)
            self._queued.append(request)
            self.counters["submitted"] += 1
            self._cv.notify()
        return handle

    def prepare(self, voice: Voice, tokens: int | None = None) -> int:
        """Render now, before serving, requests of this voice that meet every render bucket (SoVITS text encoder,
        flow and decoder; CFM windows and vocoder for v3/v4) a request of up to `tokens` tokens meets (default
        `warm_tokens`; `warm_shapes` says which), at the default parameters: each is captured and verified against
        upstream here, not in a request; v3/v4 streams also get a first chunk per CFM window bucket. A later voice
        adds its reference's graph (and its v3/v4 stream windows, which follow its prompt). Returns the renders run."""
        tokens = self.config.warm_tokens if tokens is None else tokens
        if voice.prompt_bert.device != self.device or voice.prompt_bert.dtype != self.dtype:
            voice = voice.to(self.device, self.dtype)
        started = time.perf_counter()
        streams = self.renderer.chunk is not None
        # a segment's phones fit in its row's KV cache: that bounds the phones of a stream's chunk
        shapes = warm_shapes(tokens, self.t2s.pool.capacity, streams, self.version) if tokens > self._prepared else []
        shapes = shapes or [min(warm_shapes(1, 1, False, self.version))]  # prepared already: one short render
        codes = voice.prompt_tokens.tolist() or [0]  # the voice's own tokens and phones, repeated to each length
        phones = voice.prompt_phones if voice.prompt_phones.numel() else torch.ones(1, dtype=torch.long)

        def segment(width: int) -> Segment:
            return Segment(phones.repeat(-(-width // len(phones)))[:width], phones.new_zeros(0))

        chunks = warm_chunks(self.version) if streams and self.version.renderer == "cfm" else []
        with torch.inference_mode():
            for count, (length, width) in enumerate(shapes):
                self.renderer.audio_of(count, voice, Params(), [segment(width)], [(codes * length)[:length]])
            for count, length in enumerate(chunks):  # v3/v4 streams: one first chunk per window bucket
                state = SegmentChunks(Cutter(TokenChunks(), None), tokens=(codes * length)[:length], complete=True)
                self.renderer.render_chunk(count, voice, Params(), segment(length), state, length, True, 0)
        self._prepared = max(self._prepared, tokens)
        logger.info("engine: %d renders up to %d tokens and %d stream chunks prepared in %.1f s", len(shapes),
                    max(shapes)[0], len(chunks), time.perf_counter() - started)
        return len(shapes) + len(chunks)

    def stats(self) -> dict[str, Any]:
        """Counters (submitted, rejected, finished, failed, cancelled, prefills, steps, syncs, renders; row_steps:
        tokens decoded; decode_s and render_s: seconds the loop and the render workers were busy), what is held now
        (requests, queued, rows), the rows and KV memory, and the start-up time."""
        with self._cv:
            held = {"requests": len(self._handles), "queued": len(self._queued), "rows": len(self._rows)}
        return {**self.counters, **held, "max_rows": self.t2s.pool.rows, "kv_mib": self.t2s.pool.bytes / 2**20,
                "startup_s": self.startup_s, "captures": self.t2s.runner.counters["captures"]}

    def stage_stats(self) -> dict[str, dict[str, Any]]:
        """Per render stage: its optimizer's counters (calls, optimized, eager, fallbacks, captures, ...)."""
        return {name: stage.optimization_stats() for name, stage in self.stages.items()}

    def drain(self, timeout: float | None = None) -> bool:
        """Stop taking requests (`EngineClosed`) and wait until those held have finished, at most `timeout` seconds;
        True when none is left. `close()` afterwards stops the threads."""
        with self._cv:
            self._draining = True
            return self._cv.wait_for(lambda: not self._handles, timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop taking requests, fail those held with `EngineClosed`, and stop the threads."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        for _ in range(self.config.render_workers):
            self._renders.put((STOP, next(self._render_order), None, False))
        for thread in self._threads:
            thread.join(timeout)
        for handle in list(self._handles.values()):
            self._finish(handle.request, error=EngineClosed("the engine closed before the request finished"))

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ the loop
    def _warm_up(self) -> None:
        """Capture every T2S step and prefill graph (on CUDA), largest first; then verify the decode against the
        model's own (`config.verify`): a mismatch stops the engine here, before it serves anything."""
        started = time.perf_counter()
        with torch.inference_mode():
            if self.t2s.runner.graphs:
                captured = self.t2s.capture()
                logger.info("engine: %d T2S graphs captured (%s ... %s) in %.1f s", len(captured), captured[0],
                            captured[-1], time.perf_counter() - started)
            if self.config.verify:
                model = self.t2s.model
                steps = self.t2s.probe(type(model).infer_panel_naive.__get__(model))
                logger.info("engine: T2S rows verified against the model's own logits over %d steps", steps)

    def _loop(self) -> None:
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        with torch.inference_mode(), torch.cuda.stream(stream) if stream else contextlib.nullcontext():
            while self._wait():
                started = time.perf_counter()
                try:
                    self._round()
                except Exception:  # noqa: BLE001 - the engine goes on; the rows of this round fail
                    logger.exception("engine: a decode round failed; its running requests fail")
                    for request in {request for request, _ in self._rows.values()}:
                        self._drop(request, RuntimeError("the T2S decode failed (see the log)"))
                self.counters["decode_s"] += time.perf_counter() - started

    def _wait(self) -> bool:
        """Block until there is work; False once closing."""
        with self._cv:
            while not self._closing and not self._queued and not self._rows:
                self._cv.wait(0.5)
            return not self._closing

    def _round(self) -> None:
        """Leave, admit, `CHECK_EVERY` steps over the running rows, then retire the rows that stopped."""
        self._yield_to_firsts()
        with self._cv:
            queued = list(self._queued)
        running = list({request.id: request for request, _ in self._rows.values()}.values())
        plan = schedule(queued, running, len(self.t2s.free), time.monotonic())
        for request in plan.leave:
            self._drop(request, request.stopped())
        changed = bool(plan.leave)
        if plan.admit:
            changed |= self._admit(list(plan.admit))
        if not self._rows:
            return
        if changed:
            self.t2s.arrange(list(self._rows))
        self.t2s.steps(CHECK_EVERY, nucleus=any(r.params.top_p < 1 for r, _ in self._rows.values()))
        self.counters["steps"] += CHECK_EVERY
        self.counters["row_steps"] += CHECK_EVERY * len(self._rows)
        self.counters["syncs"] += 1
        for slot in self._rows:
            self._row_steps[slot] = self._row_steps.get(slot, 0) + CHECK_EVERY
        finished = self.t2s.stopped(list(self._rows))
        for slot, tokens in finished.items():
            request, index = self._rows.pop(slot)
            self.t2s.release(slot)
            request.tokens[index] = tokens
            if request.chunks is not None:
                self._chunks_cut(request, index, tokens, complete=True)
            elif request.stream and request.status == Status.DECODING:
                self._render_later(request, (index,))
            if len(request.tokens) == len(request.segments) and self._advance(request, Status.RENDERING) and \
                    not request.stream:
                self._render_later(request, tuple(range(len(request.segments))))
        if finished and self._rows:
            self.t2s.arrange(list(self._rows))
        watched = [slot for slot, (request, _) in self._rows.items() if request.chunks is not None]
        if watched:  # the token-chunk streams' tokens so far (one more host copy)
            for slot, tokens in zip(watched, self.t2s.progress(watched, [self._row_steps[s] for s in watched])):
                self._chunks_cut(*self._rows[slot], tokens, complete=False)

    def _chunks_cut(self, request: Request, index: int, tokens: list[int], complete: bool) -> None:
        """A token-chunk stream's segment `index` has these tokens so far: queue its next chunk's render if one is
        due (one render job per stream at a time; its first chunk ahead of the others)."""
        stream = self._chunked.get(request.id)
        if stream is not None:
            stream.feed(index, tokens, complete)
            self._chunk_due(request, stream)

    def _chunk_due(self, request: Request, stream: ChunkStream) -> None:
        if stream.claim():
            priority = FIRST if stream.delivered == 0 else NEXT
            request.mark("render_queued")
            self._queue_render(priority, ChunkJob(request))

    def _admit(self, admit: list[tuple[Request, int]]) -> bool:
        """Prefill these segments into free rows, together; a request whose segment cannot start fails alone (a
        failure of the prefill call itself fails the requests in it). True when a row started."""
        prefixes, owners = [], []
        for request, index in admit:
            if request.status == Status.FAILED:  # an earlier segment of it failed just now
                continue
            voice, segment = request.voice, request.segments[index]
            try:
                phones = torch.cat([voice.prompt_phones, self._on_device(segment.phones)])
                bert = torch.cat([voice.prompt_bert, self._on_device(segment.bert).to(self.dtype)], 1)
                prefix = Prefix(phones, bert, voice.prompt_tokens, request.params, row_seed(request.seed, index))
                self.t2s.check(prefix)
            except Exception as exc:  # noqa: BLE001 - this request's inputs
                logger.warning("engine: request %d failed at its segment %d's prefill: %s", request.id, index, exc)
                self._drop(request, exc)
                continue
            prefixes.append(prefix)
            owners.append((request, index))
        try:
            slots = self.t2s.prefill(prefixes) if prefixes else []
        except Exception as exc:  # noqa: BLE001 - this call's requests fail, the engine goes on
            logger.exception("engine: a prefill of %d rows failed; their requests fail", len(prefixes))
            for request in {request.id: request for request, _ in owners}.values():
                self._drop(request, exc)
            return False
        self.counters["prefills"] += len(slots)
        for slot, (request, index) in zip(slots, owners):
            if request.status != Status.DECODING and not self._advance(request, Status.DECODING):
                self.t2s.release(slot)  # it ended meanwhile (another of its segments, or a render, failed)
                continue
            self._rows[slot] = (request, index)
            self._row_steps[slot] = 0
            request.mark("prefilled")
            request.next_segment = index + 1
            if request.pending == 0:
                with self._cv:
                    self._queued.remove(request)
        return bool(slots)

    def _advance(self, request: Request, status: Status) -> bool:
        """Move `request` to `status` unless it has ended (failed or cancelled by another thread meanwhile)."""
        with self._cv:
            if request.status in (Status.DONE, Status.FAILED, Status.CANCELLED):
                return False
            request.status = status
            return True

    def _on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on the engine's device, copied without waiting for the GPU's queued work (pinned host memory)."""
        if tensor.device == self.device:
            return tensor
        pinned = tensor.pin_memory() if self.device.type == "cuda" else tensor
        return pinned.to(self.device, non_blocking=True)

    def _drop(self, request: Request, error: BaseException) -> None:
        """Take `request` out of the queue and the batch (its rows freed) and fail its handle with `error`."""
        for slot in [s for s, (r, _) in self._rows.items() if r is request]:
            del self._rows[slot]
            self.t2s.release(slot)
        with self._cv:
            if request in self._queued:
                self._queued.remove(request)
        self._finish(request, error=error)

    def _render_later(self, request: Request, indices: tuple[int, ...]) -> None:
        """Queue the rendering of these segments of `request` (all of them, or one of a stream: its noise from that
        segment's own seed)."""
        seed = row_seed(request.seed, indices[0]) if request.stream else request.seed
        priority = FIRST if request.stream and indices == (0,) else NEXT
        request.mark("render_queued")
        self._queue_render(priority, Job(request, indices, seed))

    def _queue_render(self, priority: int, job: Job | ChunkJob) -> None:
        """Queue `job`; with `first_alone`, a stream's first render holds the loop from now until it is done."""
        held = priority == FIRST and self.first_alone
        if held:
            self._hold_for_first(1, 1)
        self._renders.put((priority, next(self._render_order), job, held))

    def _render_loop(self) -> None:
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        with torch.inference_mode(), torch.cuda.stream(stream) if stream else contextlib.nullcontext():
            while (item := self._renders.get())[2] is not None:
                _, _, job, held = item
                if held:
                    self._hold_for_first(0, -1)
                elif self._firsts_queued:  # a first render came in after this one was taken: it goes first
                    self._renders.put(item)
                    continue
                else:
                    self._yield_to_firsts()
                try:
                    self._render_chunk(job) if isinstance(job, ChunkJob) else self._render_job(job)
                except Exception as exc:  # noqa: BLE001 - this request fails, the worker and the engine go on
                    logger.warning("engine: request %d failed while rendering: %s: %s", job.request.id,
                                   type(exc).__name__, exc)
                    self._finish(job.request, error=exc)
                finally:
                    if held:
                        self._hold_for_first(-1, 0)

    def _hold_for_first(self, change: int, queued: int) -> None:
        """Count the streams' first renders held (`change`) and, of them, those still queued (`queued`)."""
        with self._cv:
            self._firsts += change
            self._firsts_queued += queued
            self._cv.notify_all()

    def _yield_to_firsts(self) -> None:
        """With `first_alone`, wait while a stream's first render is queued or runs (at most `HOLD_S`)."""
        if self.first_alone:
            with self._cv:
                self._cv.wait_for(lambda: not self._firsts or self._closing, HOLD_S)

    def _render_job(self, job: Job) -> None:
        """Render the job's segments, each followed by its silence, and deliver them: the request's result, or a
        stream's piece (the result once its last piece is in, in order)."""
        request = job.request
        if request.expired(time.monotonic()):  # cancelled, late, or ended already (then a no-op)
            self._finish(request, error=request.stopped())
            return
        started = time.perf_counter()
        request.mark("render_started")
        pieces = self.renderer.render(job)
        host = torch.cat(pieces).float().cpu().split([len(piece) for piece in pieces])  # one copy to the host
        self._rendered(started)
        rate = self.version.sample_rate
        fragments = [fragment(audio, request.params.fragment_interval, rate) for audio in host]
        if not request.stream:
            self._finish(request, result=(torch.cat(fragments), rate))
            return
        with self._cv:
            handle = self._handles.get(request.id)
        request.mark("first_audio")
        if handle is not None and handle.deliver(job.indices[0], fragments[0]) == len(request.segments):
            self._finish(request, result=(torch.cat(handle.delivered()), rate))

    def _render_chunk(self, job: ChunkJob) -> None:
        """Render a token-chunk stream's next chunk and hand it out (the segment's last one followed by its
        silence); the request's result once its last segment's last chunk is out. Then the next chunk, if due."""
        request = job.request
        with self._cv:
            stream, handle = self._chunked.get(request.id), self._handles.get(request.id)
        if stream is None or handle is None:
            return
        if request.expired(time.monotonic()):
            self._finish(request, error=request.stopped())
            return
        index, state, end, last = stream.due()
        # What earlier chunks left stays referenced until this chunk's audio is on the host: they may come from
        # another worker's CUDA stream, which could reuse their memory, freed sooner, while this one still reads it.
        carried = state.tensors()
        started = time.perf_counter()
        request.mark("render_started")
        audio = self.renderer.render_chunk(row_seed(row_seed(request.seed, index), state.chunks), request.voice,
                                           request.params, request.segments[index], state, end, last,
                                           stream.config.overlap).float().cpu()
        del carried  # this stream's work is done: their memory may serve again
        self._rendered(started)
        rate = self.version.sample_rate
        stream.rendered(end, last)
        if audio.numel() or last:  # v3/v4: the vocoder may hold a short chunk's frames until more context is in
            request.mark("first_audio")
            handle.deliver(stream.delivered, fragment(audio, request.params.fragment_interval if last else 0, rate))
            stream.delivered += 1
        if stream.finished:
            self._finish(request, result=(torch.cat(handle.delivered()), rate))
            return
        stream.release()
        self._chunk_due(request, stream)

    def _rendered(self, started: float) -> None:
        """Count a render that began at `started` (perf_counter seconds)."""
        with self._cv:
            self.counters["renders"] += 1
            self.counters["render_s"] += time.perf_counter() - started

    def _finish(self, request: Request, result: tuple[torch.Tensor, int] | None = None,
                error: BaseException | None = None) -> None:
        """Settle `request`'s handle (once) with its result or error, and count it."""
        if error is None:
            status, counter = Status.DONE, "finished"
        elif isinstance(error, Cancelled):
            status, counter = Status.CANCELLED, "cancelled"
        else:
            status, counter = Status.FAILED, "failed"
        if error is None:
            request.mark("first_audio")  # a whole request's: all of it at once
        request.mark("finished")
        with self._cv:
            handle = self._handles.pop(request.id, None)
            self._chunked.pop(request.id, None)
            if handle is None:
                return
            request.status = status
            self.counters[counter] += 1
            self._cv.notify_all()  # `drain` waits for the handles to go
        handle.finish(result, error)

    # ------------------------------------------------------------------------------------------------ builders
    @classmethod
    def from_models(cls, version: str, t2s_model: nn.Module, vits: nn.Module, vocoder: nn.Module | None = None,
                    config: EngineConfig | None = None, **options: Any) -> "Engine":
        """An engine over GPT-SoVITS models of `version`: T2S decoded by the engine, the audio rendered by `vits`
        (and `vocoder`, v3/v4), optimized as `optimize_pipeline` optimizes them."""
        from ..gpt_sovits import optimize_cfm, optimize_sovits
        from ..gpt_sovits.stage import attach_or_leave
        from ..vocoder import OptimizedVocoder, optimize_vocoder

        config = (config or EngineConfig()).replace(**options)
        shape, device = version_of(version), next(vits.parameters()).device
        stages = {}
        if config.sovits:
            stages["sovits"] = attach_or_leave("engine", "SoVITS", optimize_sovits, lambda: vits, config)
        if shape.renderer == "decode":
            chunk = functools.partial(render_chunk, vits) if hasattr(vits, "decode_streaming") else None
            return cls(t2s_model, Renderer(functools.partial(render_decode, vits), device, chunk,
                                           stages.get("sovits") is not None), shape, config, _present(stages))
        if config.cfm:
            stages["cfm"] = attach_or_leave("engine", "CFM", optimize_cfm, lambda: vits.cfm, config)
        if not isinstance(vocoder, OptimizedVocoder):
            vocoder = optimize_vocoder(vocoder, config=config)
        stages["vocoder"] = vocoder.optimizer
        own = stages.get("sovits") is not None and stages.get("cfm") is not None  # the drawing modules: stages
        return cls(t2s_model, Renderer(functools.partial(render_cfm, vits, vocoder, shape), device,
                                       functools.partial(render_chunk_cfm, vits, vocoder, shape), own), shape, config,
                   _present(stages))

    @classmethod
    def from_pipeline(cls, tts: Any, config: EngineConfig | None = None, **options: Any) -> "Engine":
        """An engine over an upstream `TTS` pipeline's models (`t2s_model.model`, `vits_model`, `vocoder`)."""
        return cls.from_models(tts.configs.version, tts.t2s_model.model, tts.vits_model,
                               getattr(tts, "vocoder", None), config, **options)


def _present(stages: dict[str, Any]) -> dict[str, Any]:
    """The stages that were attached (a module of another shape stays upstream's: no stage)."""
    return {name: stage for name, stage in stages.items() if stage is not None}
