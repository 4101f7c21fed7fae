"""A whole GPT-SoVITS request, upstream as is vs after `optimize_pipeline`, one process.

Drives upstream's own modules (random weights in upstream's configs) the way `TTS.run` serves an api_v2 request at
its defaults (fp16, batch_size 1, parallel_infer, cut5 segments, top_k 15, repetition_penalty 1.35, sample_steps
32): per segment one T2S `infer_panel_batch_infer` on prompt + segment phones and BERT features; then
* v1-v2ProPlus: one `SynthesizerTrn.decode` of all segments' tokens and phones (upstream's parallel path);
* v3 / v4: `decode_encp` of the prompt and of every segment, the windows of `using_vocoder_synthesis_batched_infer`
  (12 frames of overlap) in one batched `cfm.inference`, one vocoder call on the whole mel.
Left out, the same cost before and after: the text frontend (G2P, BERT), the reference encoders (random tensors of
their shapes), SOLA cross-fading and WAV encoding. Token counts are fixed: 5 tokens per character (25 Hz at 5
characters/s), 2 phones per character plus one per punctuation mark. Per text: the median latency of `--repeats`
requests after two warm-ups; requests/s sequential and with threads calling at once; the greedy audio before and
after (the same tokens and noise).

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/pipeline.py --versions v2ProPlus,v4 --json out.json
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from common import setup, synthesizer, t2s_model, vocoder, write

from tts_compile.gpt_sovits import VERSIONS, optimize_pipeline
from tts_compile.tools.client import TEXTS

log = logging.getLogger("benchmarks.pipeline")
PUNCTUATION = set(",.;?!、，。？！：…")
TOKENS_PER_CHAR, PHONES_PER_CHAR = 5, 2
PROMPT_TOKENS, PROMPT_PHONES, REFER_FRAMES = 75, 30, 250  # a 3 s prompt; its 5 s reference spectrogram
WARMUPS = 2  # untimed requests per text before timing
SAMPLING = {"top_k": 15, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.35}
VOCODER = {"v3": {"T_chunk": 934, "frames_per_token": 3.875}, "v4": {"T_chunk": 1000, "frames_per_token": 4}}
OVERLAP, SPEC_MIN, SPEC_MAX = 12, -12, 2  # upstream's vocoder_configs["overlapped_len"], denorm_spec's range


def segments(text: str) -> list[str]:
    """cut5 (split after every punctuation mark, drop pure punctuation), then merge into pieces of >= 5 characters."""
    pieces, current = [], ""
    for char in text:
        current += char
        if char in PUNCTUATION:
            pieces.append(current)
            current = ""
    pieces = [p for p in pieces + [current] if p and not set(p) <= PUNCTUATION]
    merged, current = [], ""
    for piece in pieces:
        current += piece
        if len(current) >= 5:
            merged.append(current)
            current = ""
    if current:
        merged[-1:] = [merged[-1] + current] if merged else [current]
    return merged


@dataclass
class Segment:
    phones: torch.Tensor  # (1, prompt + own phones): T2S input
    bert: torch.Tensor  # (1, 1024, prompt + own phones)
    tokens: int


def make_request(text: str, device: str, dtype: torch.dtype, seed: int) -> list[Segment]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for piece in segments(text):
        chars = sum(c not in PUNCTUATION for c in piece)
        phones = PROMPT_PHONES + PHONES_PER_CHAR * chars + len(piece) - chars
        out.append(Segment(torch.randint(1, 300, (1, phones), generator=gen).to(device),
                           (0.1 * torch.randn(1, 1024, phones, generator=gen)).to(device, dtype),
                           TOKENS_PER_CHAR * chars))
    return out


def build(root: Path, version: str, device: torch.device, dtype: torch.dtype, smoke: bool) -> "Models":
    """Upstream's T2S, SoVITS model and vocoder for `version`, random weights, as `TTS` holds them."""
    renders = VERSIONS[version].renderer == "cfm"
    return Models(version, t2s_model(root, device, dtype, smoke), synthesizer(root, version, device, dtype, smoke),
                  vocoder(version, device, dtype, smoke) if renders else None)


class Models:
    """The attributes of upstream's `TTS` that `optimize_pipeline` reads and replaces."""

    def __init__(self, version: str, t2s: torch.nn.Module, vits: torch.nn.Module,
                 vocoder: torch.nn.Module | None) -> None:
        self.configs = SimpleNamespace(version=version, configs_path=None)
        self.t2s_model, self.vits_model, self.vocoder = SimpleNamespace(model=t2s), vits, vocoder


class Pipeline:
    """One request through the stages as `TTS.run` calls them; per-stage seconds of the last request."""

    def __init__(self, tts: Models, device: torch.device, dtype: torch.dtype, steps: int) -> None:
        self.tts, self.device, self.steps = tts, device, steps
        self.sampling = SAMPLING
        self.version = tts.configs.version
        gen = torch.Generator().manual_seed(7)
        self.prompt = torch.randint(0, 1024, (1, PROMPT_TOKENS), generator=gen).to(device)
        self.prompt_phones = torch.randint(1, 300, (1, PROMPT_PHONES), generator=gen).to(device)
        self.refer = torch.rand(1, 1025, REFER_FRAMES, generator=gen).to(device, dtype)
        self.sv_emb = torch.randn(1, 20480, generator=gen).to(device, dtype)
        frames = int(PROMPT_TOKENS * VOCODER.get(self.version, VOCODER["v4"])["frames_per_token"])
        self.mel2 = (torch.rand(1, 100, frames, generator=gen) * 2 - 1).to(device, dtype)  # norm_spec'd range

    def __call__(self, request: list[Segment], times: dict[str, float]) -> torch.Tensor:
        with torch.no_grad():
            start = self._mark()
            tokens = [self._t2s(seg) for seg in request]
            times["t2s"] = self._mark() - start
            phones = [seg.phones[:, PROMPT_PHONES:] for seg in request]
            if VERSIONS[self.version].renderer == "decode":
                audio = self.tts.vits_model.decode(torch.cat(tokens).view(1, 1, -1), torch.cat(phones, 1),
                                                   [self.refer], speed=1.0, sv_emb=[self.sv_emb])
                times["sovits"] = self._mark() - start - times["t2s"]
                return audio
            return self._vocoder_path(tokens, phones, times, start)

    def _t2s(self, seg: Segment) -> torch.Tensor:
        """TTS.run's call at api_v2's defaults (parallel_infer, batch_size 1): `infer_panel_batch_infer` on one row,
        with its lengths and `max_len`."""
        n = seg.phones.shape[1]
        rows, idx = self.tts.t2s_model.model.infer_panel_batch_infer(
            [seg.phones[0]], torch.tensor([n], device=seg.phones.device), self.prompt, [seg.bert[0]], max_len=n,
            early_stop_num=seg.tokens - 1, **self.sampling)
        return rows[0][-idx[0]:]

    def _vocoder_path(self, tokens, phones, times, start) -> torch.Tensor:
        vits = self.tts.vits_model
        fea_ref, ge = vits.decode_encp(self.prompt.unsqueeze(0), self.prompt_phones, self.refer)
        t_min = min(self.mel2.shape[2], fea_ref.shape[2])
        mel2, fea_ref = self.mel2[:, :, :t_min], fea_ref[:, :, :t_min]
        chunk_len = VOCODER[self.version]["T_chunk"] - t_min
        feats = torch.cat([vits.decode_encp(t.view(1, 1, -1), p, self.refer, ge, 1.0)[0]
                           for t, p in zip(tokens, phones)], 2)
        padded, chunks, pos = F.pad(feats, (OVERLAP, 0)), [], 0
        while True:  # upstream's windows: chunk_len frames, each after the first starting OVERLAP frames back
            pos = pos - OVERLAP if pos else pos
            chunk = padded[:, :, pos:pos + chunk_len]
            pos += chunk_len
            if chunk.shape[-1] == 0:
                break
            chunks.append(F.pad(chunk, (0, chunk_len - chunk.shape[2])))
        batch = torch.cat(chunks, 0)
        fea = torch.cat([fea_ref.repeat(len(chunks), 1, 1), batch], 2).transpose(2, 1)
        times["encp"] = self._mark() - start - times["t2s"]
        spec = vits.cfm.inference(fea, torch.LongTensor([fea.size(1)]).to(fea.device), mel2, self.steps,
                                  inference_cfg_rate=0)
        spec = spec[:, :, -chunk_len:].permute(1, 0, 2).contiguous().view(spec.shape[1], -1).unsqueeze(0)
        times["cfm"] = self._mark() - start - times["t2s"] - times["encp"]
        audio = self.tts.vocoder((spec + 1) / 2 * (SPEC_MAX - SPEC_MIN) + SPEC_MIN)
        times["vocoder"] = self._mark() - start - times["t2s"] - times["encp"] - times["cfm"]
        return audio

    def _mark(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()


def measure(pipeline: Pipeline, requests: dict[str, list[Segment]], repeats: int,
            concurrency: list[int]) -> dict:
    """Per text: median latency and stage times over `repeats` after two warm-ups (optimize_cfm captures a bucket on
    its second call); every timed run kept; sequential and threaded req/s."""
    per_text = {}
    for label, request in requests.items():
        for _ in range(WARMUPS):
            pipeline(request, {})
        runs = []
        for _ in range(repeats):
            times: dict[str, float] = {}
            start = time.perf_counter()
            audio = pipeline(request, times)
            runs.append({"latency": time.perf_counter() - start, **times})
        per_text[label] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        per_text[label]["samples"] = audio.shape[-1]
        per_text[label]["runs"] = runs
        log.info("  %s: %.3f s  %s", label, per_text[label]["latency"],
                 "  ".join(f"{k} {v:.3f}" for k, v in per_text[label].items() if k not in ("latency", "samples", "runs")))
    labels = list(requests)
    throughput = {"sequential": len(labels) / sum(per_text[label]["latency"] for label in labels)}
    for callers in concurrency:
        jobs = [labels[i % len(labels)] for i in range(callers)]
        lock = threading.Lock()
        done = []

        def work(label: str) -> None:
            pipeline(requests[label], {})
            with lock:
                done.append(label)

        start = time.perf_counter()
        with ThreadPoolExecutor(callers) as pool:
            list(pool.map(work, jobs))
        throughput[f"{callers} callers"] = len(done) / (time.perf_counter() - start)
    log.info("  requests/s: %s", "  ".join(f"{k} {v:.3f}" for k, v in throughput.items()))
    return {"texts": per_text, "requests_per_s": throughput}


def greedy(pipeline: Pipeline, requests: dict[str, list[Segment]]) -> dict[str, torch.Tensor]:
    """Audio of each request with greedy T2S (top_k=1) and a fixed seed: the same tokens and noise before and after."""
    pipeline.sampling = {**SAMPLING, "top_k": 1}
    audio = {}
    for label, request in requests.items():
        torch.manual_seed(0)
        audio[label] = pipeline(request, {}).float().flatten()
    pipeline.sampling = SAMPLING
    return audio


def run_version(version: str, args: argparse.Namespace) -> dict:
    root, device, dtype = setup(args.smoke)
    texts = {"short": TEXTS["short"]} if args.smoke else dict(TEXTS)
    requests = {label: make_request(text, device, dtype, seed=i) for i, (label, text) in enumerate(texts.items())}
    tts = build(root, version, device, dtype, args.smoke)
    pipeline = Pipeline(tts, device, dtype, 2 if args.smoke else args.steps)
    log.info("%s, upstream as is:", version)
    before = measure(pipeline, requests, args.repeats, args.concurrency)
    reference = greedy(pipeline, requests)
    start = time.perf_counter()
    handle = optimize_pipeline(tts, compile_mode="eager" if args.smoke else args.mode)
    startup = time.perf_counter() - start
    log.info("%s, after optimize_pipeline (%s, ready in %.1f s; stages %s):", version, args.mode, startup,
             ", ".join(handle.stages))
    after = measure(pipeline, requests, args.repeats, args.concurrency)
    got = greedy(pipeline, requests)
    parity = {label: {"max_abs_diff": float((got[label] - reference[label]).abs().max()),
                      "peak": float(reference[label].abs().max())} for label in requests}
    log.info("  greedy, same seed, max |after - before|: %s", "  ".join(
        f"{k} {v['max_abs_diff']:.1e} (peak {v['peak']:.2f})" for k, v in parity.items()))
    speedup = {label: before["texts"][label]["latency"] / after["texts"][label]["latency"] for label in requests}
    log.info("  speed-up: %s", "  ".join(f"{k} {v:.2f}x" for k, v in speedup.items()))
    return {"version": version, "segments": {label: [s.tokens for s in r] for label, r in requests.items()},
            "before": before, "after": after, "speedup": speedup, "greedy_parity": parity, "startup_s": startup,
            "stats": handle.stats()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", default="v2ProPlus,v3,v4")
    parser.add_argument("--mode", default="reduce-overhead", help="compile_mode of optimize_pipeline")
    parser.add_argument("--steps", type=int, default=32, help="CFM steps (v3/v4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed requests per text (median)")
    parser.add_argument("--concurrency", default="4,16", help="comma-separated callers at once (threads)")
    parser.add_argument("--json", default="pipeline.json")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the driver only")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    if args.smoke:
        args.repeats, args.concurrency = 1, [2]
    results = [run_version(version, args) for version in args.versions.split(",")]
    write(args.json, {"args": vars(args), "results": results}, torch.device("cpu" if args.smoke else "cuda"))


if __name__ == "__main__":
    main()
