"""T2S decode: upstream's `Text2SemanticDecoder` before and after `optimize_t2s`, one row and a batch, one process.

A 60-phone + 75-prompt-token prefix; 25 and 250 generated tokens at api_v2's sampling defaults (top_k 15,
repetition_penalty 1.35), seed 5. Metric: the steady decode rate, 225 / (t(250) - t(25)) tokens/s (prefill and
start excluded), times the rows for a batch (rows of 60, 57, 54, ... phones left-padded to 60, one prompt, through
`infer_panel_batch_infer`: api_v2 with `batch_size` N). Greedy (top_k 1) tokens against upstream's, in leading
tokens that agree.

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/t2s.py --rows 1,8 --json t2s.json
"""

from __future__ import annotations

import argparse
import logging

import torch
from common import agreement, setup, t2s_model, timed, write

from tts_compile.gpt_sovits import optimize_t2s, restore_t2s

log = logging.getLogger("benchmarks.t2s")
PHONES, PROMPT, LENGTHS = 60, 75, (25, 250)
SAMPLING = {"top_k": 15, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.35}


def inputs(rows: int, device: torch.device, dtype: torch.dtype) -> tuple:
    """`rows` phone rows of 60, 57, 54, ... with their BERT features, one prompt each."""
    gen = torch.Generator().manual_seed(1)
    lengths = [PHONES - 3 * i for i in range(rows)]
    phones = [torch.randint(0, 700, (n,), generator=gen).to(device) for n in lengths]
    bert = [(0.1 * torch.randn(1024, n, generator=gen)).to(device, dtype) for n in lengths]
    prompts = torch.randint(0, 1024, (1, PROMPT), generator=gen).to(device).repeat(rows, 1)
    return phones, bert, prompts, torch.tensor(lengths, device=device)


def decode(model: torch.nn.Module, batch: tuple, tokens: int, sampling: dict) -> list[torch.Tensor]:
    """One `infer_panel_batch_infer` call (TTS.run's call), seeded: each row's generated tokens."""
    phones, bert, prompts, lengths = batch
    torch.manual_seed(5)
    y, _ = model.infer_panel_batch_infer(phones, lengths, prompts, bert, max_len=PHONES, early_stop_num=tokens - 1,
                                         **sampling)
    return [row[PROMPT:] for row in y]


def measure(model: torch.nn.Module, batch: tuple, device: torch.device, repeats: int) -> tuple[dict, list]:
    """Median ms at each length, the steady aggregate rate, and the greedy rows at the longest length."""
    ms = {n: timed(lambda n=n: decode(model, batch, n, SAMPLING), device, repeats)[1] for n in LENGTHS}
    greedy = decode(model, batch, LENGTHS[-1], {**SAMPLING, "top_k": 1})
    rate = len(batch[0]) * (LENGTHS[1] - LENGTHS[0]) / ((ms[LENGTHS[1]] - ms[LENGTHS[0]]) / 1e3)
    return {"ms": ms, "steady_tok_s": rate}, greedy


def compare(model: torch.nn.Module, rows: int, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    """Upstream, then `optimize_t2s` (captured step, Triton layers) on the same model and inputs."""
    batch = inputs(rows, device, dtype)
    with torch.inference_mode():
        upstream, reference = measure(model, batch, device, max(2, repeats // 2))
        optimize_t2s(model, compile_mode="cudagraphs")
        decode(model, batch, LENGTHS[-1], SAMPLING)  # the captures
        ours, greedy = measure(model, batch, device, repeats)
        stats = model.tts_compile.optimization_stats()
        restore_t2s(model)
    row = {"rows": rows, "upstream": upstream, "optimized": ours, "speedup": upstream["ms"][250] / ours["ms"][250],
           "greedy_tokens_agree": [agreement(a, b) for a, b in zip(greedy, reference)], "stats": stats}
    log.info("%2d rows: upstream %7.0f tok/s, optimize_t2s %7.0f tok/s (steady), %.1fx at 250 tokens; greedy agree %s",
             rows, upstream["steady_tok_s"], ours["steady_tok_s"], row["speedup"], row["greedy_tokens_agree"])
    return row


def run(rows: list[int], smoke: bool, repeats: int) -> list[dict]:
    root, device, dtype = setup(smoke)
    model = t2s_model(root, device, dtype, smoke)
    return [compare(model, n, device, dtype, repeats) for n in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,8", help="comma-separated batch rows")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per length (median)")
    parser.add_argument("--json", default="t2s.json")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU: checks the script")
    args = parser.parse_args()
    results = run([int(n) for n in args.rows.split(",")], args.smoke, args.repeats)
    write(args.json, {"phones": PHONES, "prompt": PROMPT, "sampling": SAMPLING, "results": results},
          torch.device("cpu" if args.smoke else "cuda"))


if __name__ == "__main__":
    main()
