"""What a stage's per-call checks cost: the weights fingerprints every call computes, on upstream's v2ProPlus
synthesizer (777 tensors; `storage_fingerprint` over the whole model as `Stage.follow_weights` does, and
`weights_fingerprint` over its decoder as the padded decoder does), with weights made normally and as inference
tensors (which have no version counter: a content digest, read back from the device). Median ms of 200 calls.

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/guard.py --json guard.json
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from common import setup, synthesizer, write

from tts_compile.core.weights import storage_fingerprint, weights_fingerprint

log = logging.getLogger("benchmarks.guard")


def median_ms(fn, repeats: int = 200) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="guard.json")
    parser.add_argument("--smoke", action="store_true", help="on the CPU: checks the script")
    args = parser.parse_args()
    root, device, dtype = setup(args.smoke)
    results = {}
    for kind in ("normal", "inference"):
        with torch.inference_mode(kind == "inference"):
            vits = synthesizer(root, "v2ProPlus", device, dtype, False)
        results[kind] = {"storage_fingerprint(vits)": median_ms(lambda: storage_fingerprint(vits)),
                         "weights_fingerprint(vits.dec)": median_ms(lambda: weights_fingerprint(vits.dec))}
        log.info("%-9s weights: %s", kind, {k: round(v, 3) for k, v in results[kind].items()})
    write(args.json, {"results": results}, device)


if __name__ == "__main__":
    main()
