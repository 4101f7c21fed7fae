"""Issue 6: upstream GPT-SoVITS `SynthesizerTrn.decode` eager vs `optimize_sovits`, fp16, random weights, on the GPU.

Per version and token count, in one process: upstream's decode; upstream's stages alone (reference embedding, text
encoder, flow, decoder); the optimized decode; max |diff| against upstream with the same noise.
Then float32 parity at --parity-tokens. Medians of --repeats calls after one warm-up call.
Usage (repo root, GPU machine): GPT_SOVITS_HOME=upstream python benchmarks/sovits_gpu.py --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from tts_compile.bench import timed
from tts_compile.gpt_sovits import optimize_sovits
from tts_compile.gpt_sovits.sovits import _encode, _features, _flow, _reference

log = logging.getLogger("sovits_gpu")
CONFIGS = {"v2": "s2.json", "v2Pro": "s2v2Pro.json", "v2ProPlus": "s2v2ProPlus.json"}
REFERENCE_FRAMES = 250  # a 5 s reference at 32 kHz / hop 640


def synthesizer(root: Path, version: str, dtype: torch.dtype) -> torch.nn.Module:
    from module import models

    hps = json.loads((root / "GPT_SoVITS/configs" / CONFIGS[version]).read_text())
    torch.manual_seed(0)
    vits = models.SynthesizerTrn(hps["data"]["filter_length"] // 2 + 1,
                                 hps["train"]["segment_size"] // hps["data"]["hop_length"],
                                 n_speakers=hps["data"]["n_speakers"],
                                 **{**hps["model"], "semantic_frame_rate": "25hz", "version": version})
    return vits.cuda().to(dtype).eval()


def request(tokens: int, dtype: torch.dtype, pro: bool) -> dict:
    gen = torch.Generator().manual_seed(tokens)
    return {"codes": torch.randint(0, 1024, (1, 1, tokens), generator=gen).cuda(),
            "text": torch.randint(1, 700, (1, max(8, 2 * tokens // 5)), generator=gen).cuda(),
            "refer": [torch.rand(1, 1025, REFERENCE_FRAMES, generator=gen).cuda().to(dtype)],
            "sv_emb": [torch.randn(1, 20480, generator=gen).cuda().to(dtype)] if pro else None}


def decode(vits: torch.nn.Module, req: dict) -> torch.Tensor:
    torch.manual_seed(2)
    return vits.decode(req["codes"], req["text"], req["refer"], sv_emb=req["sv_emb"])


def stages(vits: torch.nn.Module, req: dict, repeats: int) -> dict[str, float]:
    """Median ms of each of upstream's stages alone, eager, at the request's exact lengths."""
    ms = lambda fn: timed(fn, torch.device("cuda"), repeats)[1]  # noqa: E731
    inputs = (*req["refer"], *(req["sv_emb"] or []))
    ge = _reference(vits, True, 1, *inputs)
    frames = 2 * req["codes"].size(-1)
    lengths = torch.tensor([frames, req["text"].size(-1), frames], device="cuda")
    encode = lambda: _encode(vits, _features(vits, req["codes"]), req["text"], lengths, ge)  # noqa: E731
    y = encode()
    noise = torch.randn(1, vits.enc_p.out_channels, frames, device="cuda", dtype=y.dtype)
    z = _flow(vits, 0.5, y, lengths, noise, ge)
    return {"reference": ms(lambda: _reference(vits, True, 1, *inputs)), "encoder": ms(encode),
            "flow": ms(lambda: _flow(vits, 0.5, y, lengths, noise, ge)), "decoder": ms(lambda: vits.dec(z, g=ge))}


def compare(version: str, tokens: list[int], mode: str, repeats: int) -> list[dict]:
    root = Path(os.environ["GPT_SOVITS_HOME"])
    vits = synthesizer(root, version, torch.float16)
    reqs = {t: request(t, torch.float16, "Pro" in version) for t in tokens}
    rows = []
    with torch.inference_mode():
        eager = {t: timed(functools.partial(decode, vits, reqs[t]), torch.device("cuda"), repeats)[:2] for t in tokens}
        eager_stages = {t: stages(vits, reqs[t], repeats) for t in tokens}
        start = time.perf_counter()
        optimize_sovits(vits, compile_mode=mode)
        startup = time.perf_counter() - start
        for t in tokens:
            first = time.perf_counter()
            decode(vits, reqs[t])
            torch.cuda.synchronize()
            first = time.perf_counter() - first
            out, ms, _ = timed(functools.partial(decode, vits, reqs[t]), torch.device("cuda"), repeats)
            reference, eager_ms = eager[t]
            rows.append({"version": version, "tokens": t, "phones": reqs[t]["text"].size(-1), "eager_ms": eager_ms,
                         "optimized_ms": ms, "speedup": eager_ms / ms, "first_call_s": first,
                         "max_abs_diff": float((out - reference).abs().max()),
                         "peak": float(reference.abs().max()), "eager_stages_ms": eager_stages[t],
                         "startup_s": startup})
    rows[-1]["stats"] = vits.tts_compile.optimization_stats()
    return rows


def parity32(version: str, tokens: int, mode: str) -> dict:
    """float32: upstream's decode vs the optimized one (captured), same noise."""
    vits = synthesizer(Path(os.environ["GPT_SOVITS_HOME"]), version, torch.float32)
    req = request(tokens, torch.float32, "Pro" in version)
    with torch.inference_mode():
        expected = decode(vits, req)
        optimize_sovits(vits, compile_mode=mode)
        decode(vits, req)
        got = decode(vits, req)
    return {"version": version, "tokens": tokens, "max_abs_diff": float((got - expected).abs().max()),
            "peak": float(expected.abs().max()), "stats": vits.tts_compile.optimization_stats()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="sovits.json")
    parser.add_argument("--versions", default="v2ProPlus,v2")
    parser.add_argument("--tokens", default="25,100,250,500")
    parser.add_argument("--mode", default="cudagraphs")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--parity-tokens", type=int, default=250)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(os.environ["GPT_SOVITS_HOME"]).resolve()
    sys.path[:0] = [str(root), str(root / "GPT_SoVITS")]
    tokens = [int(t) for t in args.tokens.split(",")]
    rows = [row for version in args.versions.split(",") for row in compare(version, tokens, args.mode, args.repeats)]
    parity = [parity32(version, args.parity_tokens, args.mode) for version in args.versions.split(",")]
    log.info("%-10s %6s %6s %10s %10s %7s %9s | eager stages ms: ref / enc / flow / dec", "version",
             "tokens", "phones", "eager ms", "ours ms", "speedup", "max|diff|")
    for r in rows:
        s = r["eager_stages_ms"]
        log.info("%-10s %6d %6d %10.2f %10.2f %6.2fx %9.1e | %5.2f / %5.2f / %5.2f / %5.2f", r["version"],
                 r["tokens"], r["phones"], r["eager_ms"], r["optimized_ms"], r["speedup"], r["max_abs_diff"],
                 s["reference"], s["encoder"], s["flow"], s["decoder"])
    for p in parity:
        log.info("fp32 parity %s %d tokens: max|diff| %.1e (peak %.2f)", p["version"], p["tokens"], p["max_abs_diff"],
                 p["peak"])
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "mode": args.mode,
                   "rows": rows, "parity_fp32": parity}, f, indent=1)


if __name__ == "__main__":
    main()
