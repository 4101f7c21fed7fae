"""One sentence streamed as `TTS.run` streams it, upstream's T2S loop against `optimize_t2s`'s, one process.

Upstream's v2ProPlus T2S and synthesizer (random weights, fp16; EOS never sampled, so `early_stop_num` fixes the
length): `infer_panel_naive(streaming_mode=True)` with api_v2's mode 3 (fixed-length chunks of `--chunk` tokens) or
mode 2 (cut at mute-like tokens: a similarity matrix with one token id in ten mute-like, threshold 0.0 as `TTS.run`
sets it), and for every chunk upstream's `decode_streaming` of all tokens so far with `TTS.run`'s `result_length` and
overlap latents (the SoVITS side is upstream's in both columns). Per path: the time to the first audio on the host,
to the whole stream, and the chunks (which are the same: same seed, same tokens). Median of `--repeats` after a
warm-up.

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

from tts_compile.gpt_sovits import optimize_t2s

log = logging.getLogger("benchmarks.streaming")
OVERLAP = 2  # api_v2's overlap_length: tokens re-decoded in front of each chunk


def stream(tts, driver: Pipeline, phones: torch.Tensor, bert: torch.Tensor, tokens: int, chunk: int,
           mute: torch.Tensor | None, seed: int) -> dict:
    """One streamed request: seconds to the first audio and to the end, the chunks' token counts."""
    model, vits, device = tts.t2s_model.model, tts.vits_model, phones.device
    extra = {} if mute is None else {"mute_emb_sim_matrix": mute, "chunk_split_thershold": 0.0}
    torch.manual_seed(seed)
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    start, first, sizes, previous, last_latent = time.perf_counter(), None, [], [], None
    for tokens_chunk, _ in model.infer_panel_naive(phones, None, driver.prompt, bert, top_k=15, top_p=1.0,
                                                   temperature=1.0, repetition_penalty=1.35,
                                                   early_stop_num=tokens - 1, streaming_mode=True,
                                                   chunk_length=chunk, **extra):
        if tokens_chunk is None:
            break
        previous.append(tokens_chunk)
        so_far = torch.cat(previous, dim=-1)
        audio, latent, _ = vits.decode_streaming(
            so_far.unsqueeze(0), phones[:, PROMPT_PHONES:], driver.refer, speed=1.0, sv_emb=driver.sv_emb,
            result_length=None if len(previous) == 1 else tokens_chunk.shape[-1] + OVERLAP,
            overlap_frames=None if last_latent is None else last_latent[:, :, -2 * OVERLAP:], padding_length=0)
        audio = audio.float().cpu()  # on the host: what a client can play
        first = first or time.perf_counter() - start
        sizes.append(tokens_chunk.shape[-1])
        last_latent = latent
    return {"first_s": first, "whole_s": time.perf_counter() - start, "chunks": sizes}


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
    results = {}
    for name in ("upstream", "optimize_t2s"):
        if name == "optimize_t2s":
            optimize_t2s(tts.t2s_model.model, compile_mode="eager" if args.smoke else "cudagraphs", progress=False)
        for mode, matrix in (("mode 3 (fixed)", None), ("mode 2 (mute cuts)", mute)):
            with torch.no_grad():
                stream(tts, driver, phones, bert, args.tokens, args.chunk, matrix, 0)  # warm-up, captures
                runs = [stream(tts, driver, phones, bert, args.tokens, args.chunk, matrix, 0)
                        for _ in range(args.repeats)]
            point = {key: statistics.median(r[key] for r in runs) for key in ("first_s", "whole_s")}
            results.setdefault(name, {})[mode] = {**point, "chunks": runs[0]["chunks"], "runs": runs}
            log.info("%-13s %-18s first audio %7.1f ms  whole stream %6.3f s  chunks %s", name, mode,
                     1e3 * point["first_s"], point["whole_s"], runs[0]["chunks"])
    for mode in results["upstream"]:
        same = results["upstream"][mode]["chunks"] == results["optimize_t2s"][mode]["chunks"]
        log.info("%s: the same chunks: %s", mode, same)
    write(args.json, {"args": vars(args), "results": results}, device)


if __name__ == "__main__":
    main()
