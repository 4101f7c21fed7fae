"""The text frontend's BERT: upstream's `TextPreprocessor.get_bert_feature` against `optimize_bert`'s, one process.

A BERT of chinese-roberta-wwm-ext-large's shape (24 layers, 1024 wide, 16 heads, 21128 tokens) with random weights,
fp16, loaded as upstream loads its own (`AutoModelForMaskedLM`), a tokenizer of the texts' characters; upstream's
method is its checkout's own source (`GPT_SOVITS_HOME`), run on a stand-in preprocessor holding the model. The
client's short / medium / long texts cut after punctuation, two phones per character. Per segment length: median ms
after warm-up (synced), upstream and optimized; per text: the sum over its segments, and `batched`, all its segments
in one `features` call (what the server's frontend makes per request); accuracy: each path's fp16 features against
a float32 copy of the model (max abs difference over the texts).

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/bert.py --json bert.json
"""

from __future__ import annotations

import argparse
import copy
import logging
import re

import torch
import transformers
from common import setup, timed, write

from tts_compile.gpt_sovits import optimize_bert
from tts_compile.gpt_sovits.upstream import upstream_method
from tts_compile.tools.client import TEXTS

log = logging.getLogger("benchmarks.bert")
PUNCTUATION = "。，、；：？！.,;:?!"


class Preprocessor:
    """What upstream's method reads: `bert_model`, `tokenizer`, `device`."""

    def __init__(self, model: torch.nn.Module, tokenizer: object, device: torch.device) -> None:
        self.bert_model, self.tokenizer, self.device = model, tokenizer, device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default="bert.json")
    parser.add_argument("--smoke", action="store_true", help="a 2-layer BERT on the CPU: checks the script")
    args = parser.parse_args()
    _, device, dtype = setup(args.smoke)
    segments = {label: [p for p in re.split(f"[{re.escape(PUNCTUATION)}\\s]+", text) if p]
                for label, text in TEXTS.items()}
    chars = sorted({c for parts in segments.values() for part in parts for c in part})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    tokenizer = transformers.BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    layers, width = (2, 64) if args.smoke else (24, 1024)
    config = transformers.BertConfig(vocab_size=21128, hidden_size=width, num_hidden_layers=layers,
                                     num_attention_heads=16, intermediate_size=4 * width)
    torch.manual_seed(0)
    reference = transformers.BertForMaskedLM(config).eval().to(device)
    model = copy.deepcopy(reference).to(dtype)
    method = upstream_method("TTS_infer_pack/TextPreprocessor.py", "TextPreprocessor", "get_bert_feature", torch=torch)

    class Upstream(Preprocessor):
        get_bert_feature = method

    plain = Upstream(model, tokenizer, device)
    truth = Upstream(reference, tokenizer, device)
    optimized = optimize_bert(Upstream(model, tokenizer, device), compile_mode="eager" if args.smoke else
                              "cudagraphs", warmup="lazy")
    results = {"per_segment": {}, "per_text": {}, "max_abs_vs_fp32": {"upstream": 0.0, "optimized": 0.0}}
    with torch.inference_mode():
        for label, parts in segments.items():
            totals = {"upstream": 0.0, "optimized": 0.0}
            for part in parts:
                word2ph = [2] * len(part)
                want = truth.get_bert_feature(part, word2ph).float()
                for name, frontend in (("upstream", plain), ("optimized", optimized)):
                    got = frontend.get_bert_feature(part, word2ph)  # warm-up: capture and verification
                    distance = float((got.float() - want).abs().max())
                    results["max_abs_vs_fp32"][name] = max(results["max_abs_vs_fp32"][name], distance)
                    ms = timed(lambda f=frontend: f.get_bert_feature(part, word2ph), device, args.repeats)[1]
                    results["per_segment"].setdefault(name, {})[len(part)] = ms
                    totals[name] += ms
            items = [(part, [2] * len(part)) for part in parts]
            batched = optimized.tts_compile.features(items)  # warm-up: capture and verification
            distance = max(float((got.float() - truth.get_bert_feature(*item).float()).abs().max())
                           for got, item in zip(batched, items))
            results["max_abs_vs_fp32"]["batched"] = max(results["max_abs_vs_fp32"].get("batched", 0.0), distance)
            totals["batched"] = timed(lambda: optimized.tts_compile.features(items), device, args.repeats)[1]
            results["per_text"][label] = totals
            log.info("%-6s %2d segments: upstream %.2f ms, optimized %.2f ms, batched %.2f ms (%.1fx)", label,
                     len(parts), totals["upstream"], totals["optimized"], totals["batched"],
                     totals["upstream"] / totals["batched"])
    results["stats"] = optimized.tts_compile.optimization_stats()
    log.info("max |fp16 - fp32 model|: upstream %.2e, optimized %.2e, batched %.2e",
             *results["max_abs_vs_fp32"].values())
    write(args.json, {"args": vars(args), "results": results}, device)


if __name__ == "__main__":
    main()
