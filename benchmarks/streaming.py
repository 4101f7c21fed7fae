"""One sentence streamed as `TTS.run` streams it: upstream, `optimize_t2s` alone, and `optimize_t2s` with
`optimize_sovits` (its captured `decode_streaming`), one process.

Upstream's v2ProPlus T2S and synthesizer (random weights, fp16; EOS never sampled, so `early_stop_num` fixes the
length): `infer_panel_naive(streaming_mode=True)` with api_v2's mode 3 (fixed-length chunks of `--chunk` tokens) or
mode 2 (cut at mute-like tokens: a similarity matrix with one token id in ten mute-like, threshold 0.0 as `TTS.run`
sets it), and for every chunk `decode_streaming` of all tokens so far with `TTS.run`'s `result_length` and overlap
latents. Per path: the time to the first audio on the host, to the whole stream, the same sentence not streamed
(`infer_panel_naive` then one `decode`), the chunks and each chunk's audio against upstream's (same seed: the same
tokens and noise; fp16 rounding apart). Median of `--repeats` after a warm-up.

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/streaming.py --json streaming.json
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from common import setup, write
from pipeline import PROMPT_PHONES, Pipeline, build

from tts_compile.gpt_sovits import optimize_sovits, optimize_t2s

log = logging.getLogger("benchmarks.streaming")
OVERLAP = 2  # api_v2's overlap_length: tokens re-decoded in front of each chunk
PATHS = ("upstream", "optimize_t2s", "optimize_t2s + optimize_sovits")  # each adds a stage to the one before


def stream(tts, driver: Pipeline, phones: torch.Tensor, bert: torch.Tensor, tokens: int, chunk: int,
           mute: torch.Tensor | None, seed: int) -> dict:
    """One streamed request: seconds to the first audio and to the end, the chunks' token counts, their audio."""
    model, vits, device = tts.t2s_model.model, tts.vits_model, phones.device
    extra = {} if mute is None else {"mute_emb_sim_matrix": mute, "chunk_split_thershold": 0.0}
    torch.manual_seed(seed)
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    start, first, sizes, previous, last_latent, audios = time.perf_counter(), None, [], [], None, []
    for tokens_chunk, _ in model.infer_panel_naive(phones, None, driver.prompt, bert, top_k=15, top_p=1.0,
                                                   temperature=1.0, repetition_penalty=1.35,
                                                   early_stop_num=tokens - 1, streaming_mode=True,
                                                   chunk_length=chunk, **extra):
        if tokens_chunk is None:
            break
        previous.append(tokens_chunk)
        overlap = OVERLAP + max(0, 10 - tokens_chunk.shape[-1]) if last_latent is not None else OVERLAP
        audio, latent, _ = vits.decode_streaming(
            torch.cat(previous, dim=-1).unsqueeze(0), phones[:, PROMPT_PHONES:], driver.refer, speed=1.0,
            sv_emb=driver.sv_emb, result_length=None if last_latent is None else tokens_chunk.shape[-1] + overlap,
            overlap_frames=None if last_latent is None else last_latent[:, :, -2 * overlap:], padding_length=0)
        audios.append(audio.float().cpu())  # on the host: what a client can play
        first = first or time.perf_counter() - start
        sizes.append(tokens_chunk.shape[-1])
        last_latent = latent
    return {"first_s": first, "whole_s": time.perf_counter() - start, "chunks": sizes, "audio": audios}


def whole(tts, driver: Pipeline, phones: torch.Tensor, bert: torch.Tensor, tokens: int, seed: int) -> float:
    """Seconds for the same sentence not streamed: one `infer_panel_naive`, one `decode`, the audio on the host."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    y, _ = next(tts.t2s_model.model.infer_panel_naive(phones, None, driver.prompt, bert, top_k=15, top_p=1.0,
                                                       temperature=1.0, repetition_penalty=1.35,
                                                       early_stop_num=tokens - 1))
    generated = y[:, driver.prompt.shape[1]:]
    tts.vits_model.decode(generated.unsqueeze(0), phones[:, PROMPT_PHONES:], driver.refer, speed=1.0,
                          sv_emb=driver.sv_emb).float().cpu()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--chunk", type=int, default=16, help="api_v2's min_chunk_length")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="streaming.json")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script")
    args = parser.parse_args()
    root, device, dtype = setup(args.smoke)
    tts = build(root, "v2ProPlus", device, dtype, args.smoke)
    driver = Pipeline(tts, device, dtype, 2)
    gen = torch.Generator().manual_seed(1)
    phones = torch.randint(1, 300, (1, PROMPT_PHONES + 120), generator=gen).to(device)
    bert = (0.1 * torch.randn(1, 1024, phones.shape[1], generator=gen)).to(device, dtype)
    mute = torch.full((tts.t2s_model.model.EOS + 1,), -0.5)  # one in ten token ids sounds like silence
    mute[torch.randperm(len(mute), generator=gen)[: len(mute) // 10]] = 0.8
    mute = mute.to(device)
    results, mode_compile = {}, "eager" if args.smoke else "cudagraphs"
    for name in PATHS:
        if name == "optimize_t2s":
            optimize_t2s(tts.t2s_model.model, compile_mode=mode_compile, progress=False)
        if name == "optimize_t2s + optimize_sovits":
            optimize_sovits(tts.vits_model, compile_mode=mode_compile, progress=False)
        with torch.no_grad():
            whole(tts, driver, phones, bert, args.tokens, 0)  # warm-up, captures
            not_streamed = statistics.median(whole(tts, driver, phones, bert, args.tokens, 0)
                                             for _ in range(args.repeats))
        for mode, matrix in (("mode 3 (fixed)", None), ("mode 2 (mute cuts)", mute)):
            with torch.no_grad():
                stream(tts, driver, phones, bert, args.tokens, args.chunk, matrix, 0)  # warm-up, captures
                runs = [stream(tts, driver, phones, bert, args.tokens, args.chunk, matrix, 0)
                        for _ in range(args.repeats)]
            point = {key: statistics.median(r[key] for r in runs) for key in ("first_s", "whole_s")}
            audio = runs[0].pop("audio")
            for run in runs[1:]:
                del run["audio"]
            reference = results.get("upstream", {}).get(mode, {}).get("audio", audio)
            difference = max(float((a - b).abs().max()) for a, b in zip(audio, reference, strict=True))
            results.setdefault(name, {})[mode] = {**point, "not_streamed_s": not_streamed, "chunks": runs[0]["chunks"],
                                                  "audio_vs_upstream": difference, "runs": runs, "audio": audio}
            log.info("%-31s %-18s first audio %7.1f ms  whole stream %6.3f s (not streamed %6.3f s)  chunks %s  "
                     "audio vs upstream %.2e", name, mode, 1e3 * point["first_s"], point["whole_s"], not_streamed,
                     runs[0]["chunks"], difference)
    for name in results:
        for mode in results[name]:
            results[name][mode].pop("audio")
            results[name][mode]["same_chunks"] = results[name][mode]["chunks"] == results["upstream"][mode]["chunks"]
    write(args.json, {"args": vars(args), "results": results}, device)


if __name__ == "__main__":
    main()
