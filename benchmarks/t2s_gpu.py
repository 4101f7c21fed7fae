"""Upstream GPT-SoVITS T2S decode before and after `optimize_t2s`, on the GPU (issue 5), random weights, fp16.

Upstream's `Text2SemanticDecoder` from `s1longer-v2.yaml` (24 layers, 512-d, 16 heads); a 60-phone + 75-prompt-token
prefix; 25 and 250 generated tokens (random weights never emit EOS, so `early_stop_num` fixes the length) at
api_v2's sampling defaults (top_k 15, repetition_penalty 1.35) and greedy (top_k 1) for token parity.
Steady-state decode rate = 225 tokens / (time(250) - time(25)). Rows: upstream eager (`infer_panel_naive`),
upstream's CUDA-graph runner (`t2s_model_cudagraph.CUDAGraphRunner`, wired only into its web UI; its own EOS rule,
so no token parity), and `optimize_t2s` per variant (Triton kernels, or torch ops in the captured step).
`--batch N`: the same for N rows through `infer_panel_batch_infer` (api_v2 with `batch_size` N; phones 60, 57, 54,
... left-padded to 60, one prompt), upstream's batched loop against the Triton variant; aggregate tok/s = N * 225 /
(time(250) - time(25)).
Usage (repo root, GPU machine): GPT_SOVITS_HOME=upstream python benchmarks/t2s_gpu.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
import yaml

from tts_compile.bench import timed
from tts_compile.gpt_sovits.t2s import optimize_t2s, restore_t2s

log = logging.getLogger("t2s_gpu")
PHONES, PROMPT = 60, 75
LENGTHS = (25, 250)
SAMPLING = {"top_k": 15, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.35}


def build(root: Path, device: str, smoke: bool):
    from AR.models.t2s_model import Text2SemanticDecoder

    config = yaml.safe_load((root / "GPT_SoVITS/configs/s1longer-v2.yaml").read_text())
    if smoke:
        config["model"].update(n_layer=2, hidden_dim=64, embedding_dim=64, head=4)
    torch.manual_seed(0)
    model = Text2SemanticDecoder(config=config, top_k=3).to(device).eval()
    with torch.no_grad():  # an EOS logit of 0 never wins: every path decodes the full length (upstream's runner,
        model.ar_predict_layer.weight[model.EOS].zero_()  # with its own EOS rule, stopped at 20 tokens in run 18)
    return model.half() if device == "cuda" else model


def make_inputs(device: str):
    gen = torch.Generator().manual_seed(1)
    phones = torch.randint(0, 700, (1, PHONES), generator=gen).to(device)
    bert = (0.1 * torch.randn(1, 1024, PHONES, generator=gen)).to(device)
    prompts = torch.randint(0, 1024, (1, PROMPT), generator=gen).to(device)
    return phones, prompts, bert


VARIANTS = {"kernels": {"compile_mode": "cudagraphs"},
            "torch": {"compile_mode": "cudagraphs", "t2s_kernels": False},
            "reduce-overhead": {"compile_mode": "reduce-overhead"}}


def graph_runner(model, root: Path):
    """Upstream's web-UI runner over the same weights (its loader's key mapping, from our state dict)."""
    from AR.models.structs_cudagraph import T2SRequest
    from AR.models.t2s_model_cudagraph import CUDAGraphRunner, T2SDecoder

    config = yaml.safe_load((root / "GPT_SoVITS/configs/s1longer-v2.yaml").read_text())
    decoder = T2SDecoder(config, max_batch_size=1)
    decoder.load_state_dict({f"model.{k}": v.float() for k, v in model.state_dict().items()})
    runner = CUDAGraphRunner(decoder.eval(), torch.device("cuda"), torch.float16)

    def run(inputs, tokens: int, sampling: dict) -> torch.Tensor:
        phones, prompts, bert = inputs
        torch.manual_seed(5)
        request = T2SRequest([phones[0]], torch.tensor([PHONES], device=phones.device), prompts, [bert[0].half()],
                             valid_length=1, early_stop_num=tokens - 1, use_cuda_graph=True, **sampling)
        result = runner.generate(request)
        if result.exception is not None:
            raise result.exception
        return result.result[0]

    return run


def make_batch(device: str, batch: int):
    """`batch` rows as TTS.run passes them: phone rows of 60, 57, 54, ... with their BERT features, one prompt."""
    phones, prompts, bert = make_inputs(device)
    lengths = [PHONES - 3 * i for i in range(batch)]
    return ([phones[0, :n] for n in lengths], [bert[0, :, :n] for n in lengths], prompts.repeat(batch, 1),
            torch.tensor(lengths, device=device))


def decode_batch(model, rows, tokens: int, sampling: dict) -> list[torch.Tensor]:
    phones, bert, prompts, lengths = rows
    torch.manual_seed(5)
    dtype = next(model.parameters()).dtype
    y, _ = model.infer_panel_batch_infer(phones, lengths, prompts, [b.to(dtype) for b in bert], max_len=PHONES,
                                         early_stop_num=tokens - 1, **sampling)
    return [row[PROMPT:] for row in y]


def measure_batch(model, rows, device, repeats) -> dict:
    """`measure` over `decode_batch`: aggregate tok/s = rows x the steady rate (every row decodes every token: the
    EOS logit is zeroed), and the greedy rows at the longest length."""
    result, _, greedy = measure(lambda batch, n, sampling: decode_batch(model, batch, n, sampling), rows, device,
                                repeats)
    return {"batch": len(rows[0]), "ms": result["ms"],
            "aggregate_steady_tok_s": len(rows[0]) * result["steady_tok_s"]}, greedy


def decode(model, inputs, tokens: int, sampling: dict) -> torch.Tensor:
    phones, prompts, bert = inputs
    torch.manual_seed(5)
    y, _ = model.infer_panel_naive(phones, None, prompts, bert.to(next(model.parameters()).dtype),
                                   early_stop_num=tokens - 1, **sampling).__next__()
    return y[0, PROMPT:]


def agreement(a: torch.Tensor, b: torch.Tensor) -> int:
    """Leading tokens that agree."""
    differ = (a != b).nonzero()
    return int(differ[0]) if len(differ) else len(a)


def measure(run, inputs, device, repeats):
    """`run(inputs, tokens, sampling)` timed at each length; its greedy tokens at the longest."""
    out, times = {}, {}
    for n in LENGTHS:
        out[n], times[n], _ = timed(lambda n=n: run(inputs, n, SAMPLING), device, repeats)
    greedy = run(inputs, LENGTHS[-1], {**SAMPLING, "top_k": 1})
    steady = (LENGTHS[1] - LENGTHS[0]) / ((times[LENGTHS[1]] - times[LENGTHS[0]]) / 1e3)
    return {"ms": times, "steady_tok_s": steady, "end_to_end_tok_s": LENGTHS[1] / times[LENGTHS[1]] * 1e3}, out, greedy


def profile(model, inputs, path: str) -> None:
    """Device time per kernel of a 50-token decode with the same step run uncaptured (compile_mode eager): where
    a captured step's time goes, kernel by kernel."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    optimize_t2s(model, compile_mode="eager")
    decode(model, inputs, 50, SAMPLING)
    cuda = torch.cuda.is_available()
    with torch_profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        decode(model, inputs, 50, SAMPLING)
    restore_t2s(model)
    table = prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=25,
                                      max_name_column_width=70)
    Path(path).write_text(table)
    log.info("%s", "\n".join(table.splitlines()[:20]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="t2s.json")
    parser.add_argument("--variants", default="kernels,torch", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the script")
    parser.add_argument("--profile", default="", help="write a per-kernel table of 50 uncaptured decode steps here")
    parser.add_argument("--batch", type=int, default=0, help="also measure this many rows (batched decode)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1")
    root = Path(os.environ["GPT_SOVITS_HOME"]).resolve()
    sys.path[:0] = [str(root), str(root / "GPT_SoVITS")]
    device = torch.device("cpu" if args.smoke else "cuda")
    model = build(root, device.type, args.smoke)
    inputs = make_inputs(device.type)

    def run(*call):  # upstream's methods until optimize_t2s patches them
        return decode(model, *call)

    with torch.inference_mode():
        upstream, ref, ref_greedy = measure(run, inputs, device, max(2, args.repeats // 2))
        rows = [{"path": "upstream eager", **upstream}]
        log.info("upstream eager: %s", upstream)
        if not args.smoke:
            graphed, _, _ = measure(graph_runner(model, root), inputs, device, args.repeats)
            rows.append({"path": "upstream CUDAGraphRunner", **graphed})
            log.info("upstream CUDAGraphRunner: %s", graphed)
        for variant in args.variants.split(","):
            optimize_t2s(model, **VARIANTS[variant])
            start = time.perf_counter()
            run(inputs, LENGTHS[-1], SAMPLING)
            first = time.perf_counter() - start
            result, out, greedy = measure(run, inputs, device, args.repeats)
            stats = model.tts_compile.optimization_stats()
            restore_t2s(model)
            row = {"path": f"optimize_t2s {variant}", **result, "first_call_s": first, "stats": stats,
                   "greedy_tokens_agree": agreement(greedy, ref_greedy), "sampled_tokens_agree":
                   agreement(out[LENGTHS[-1]], ref[LENGTHS[-1]]), "syncs_per_250": stats["syncs"] / stats["calls"]}
            rows.append(row)
            log.info("%s: %s", row["path"], {k: v for k, v in row.items() if k != "path"})
    batch_rows = []
    if args.batch:
        rows_in = make_batch(device.type, args.batch)
        with torch.inference_mode():
            upstream_batch, ref_greedy_rows = measure_batch(model, rows_in, device, max(2, args.repeats // 2))
            batch_rows.append({"path": "upstream eager, batched", **upstream_batch})
            optimize_t2s(model, **VARIANTS["kernels"])
            decode_batch(model, rows_in, LENGTHS[-1], SAMPLING)  # the captures
            ours, greedy_rows = measure_batch(model, rows_in, device, args.repeats)
            stats = model.tts_compile.optimization_stats()
            restore_t2s(model)
            batch_rows.append({"path": "optimize_t2s kernels, batched", **ours, "stats": stats,
                               "greedy_tokens_agree": [agreement(a, b) for a, b in zip(greedy_rows, ref_greedy_rows)]})
        for row in batch_rows:
            log.info("%-32s batch %d: %10.1f %10.1f ms, %9.0f tok/s aggregate %s", row["path"], row["batch"],
                     row["ms"][25], row["ms"][250], row["aggregate_steady_tok_s"], row.get("greedy_tokens_agree", ""))
    if args.profile:
        with torch.inference_mode():
            profile(model, inputs, args.profile)
    log.info("%-32s %10s %10s %12s %12s", "path", "25 tok ms", "250 tok ms", "steady tok/s", "speed-up")
    for row in rows:
        log.info("%-32s %10.1f %10.1f %12.0f %11.1fx", row["path"], row["ms"][25], row["ms"][250],
                 row["steady_tok_s"], rows[0]["ms"][250] / row["ms"][250])
    with open(args.json, "w") as f:
        json.dump({"device": "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(), "torch": torch.__version__,
                   "phones": PHONES, "prompt": PROMPT, "sampling": SAMPLING, "rows": rows, "batch_rows": batch_rows},
                  f, indent=1)


if __name__ == "__main__":
    main()
