"""`python -m tts_compile bench | probe | client`: the command-line entry points."""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
from typing import Sequence

from ..core.config import ACTIVATIONS, COMPILE_MODES, DTYPES, SWITCHES
from ..models import MODELS
from . import bench

logger = logging.getLogger("tts_compile")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tts_compile", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every bucket and call (DEBUG)")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_bench(commands.add_parser("bench", help="eager vs optimized on a built-in vocoder, side by side"))
    _add_probe(commands.add_parser("probe", help="receptive field and hop of a vocoder"))
    _add_client(commands.add_parser("client", help="latency and throughput of a running GPT-SoVITS service"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    return args.run(args)


def _add_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="bigvgan-tiny", choices=sorted(MODELS))
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--dtype", default="float32", choices=[d for d in DTYPES if d != "auto"])
    parser.add_argument("--lengths", default=",".join(map(str, bench.DEFAULT_LENGTHS)),
                        help="comma-separated mel lengths in frames")
    parser.add_argument("--mode", default="reduce-overhead", choices=COMPILE_MODES, help="compile_mode")
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per length (median reported)")
    parser.add_argument("--max-eager-frames", type=int, default=20000, help="skip the eager baseline above this")
    parser.add_argument("--cache-dir", default=None, help="persistent compile cache directory")
    parser.add_argument("--no-tf32", action="store_true", help="float32 without TF32 (eager and optimized)")
    parser.add_argument("--no-cudnn-benchmark", action="store_true", help="skip cuDNN's algorithm timing")
    parser.add_argument("--fused-activation", default="auto", choices=ACTIVATIONS,
                        help="BigVGAN's activation as one Triton kernel on CUDA (auto: where found; inductor: as "
                        "a kernel inductor generates)")
    parser.add_argument("--channels-last", default="auto", choices=SWITCHES,
                        help="convolutions in channels-last layout on CUDA")
    parser.add_argument("--json", default=None, help="append the report to this JSON file")
    parser.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    lengths = [int(n) for n in args.lengths.split(",") if n.strip()]
    report = bench.run(args.model, device=args.device, dtype=args.dtype, lengths=lengths, repeats=args.repeats,
                       max_eager_frames=args.max_eager_frames, compile_mode=args.mode, chunk_size=args.chunk_size,
                       max_batch=args.max_batch, cache_dir=args.cache_dir, progress=sys.stderr.isatty(),
                       tf32=not args.no_tf32, cudnn_benchmark=not args.no_cudnn_benchmark,
                       fused_activation=args.fused_activation, channels_last=args.channels_last)
    sys.stdout.write(report.table() + "\n")
    if args.json:
        bench.write_json(report, args.json, "python -m tts_compile " + " ".join(map(shlex.quote, sys.argv[1:])))
    return 0


def _add_probe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", default="bigvgan-tiny",
                        help=f"a built-in model ({', '.join(sorted(MODELS))}) or module:attribute naming an "
                             "nn.Module instance or a zero-argument factory")
    parser.add_argument("--n-mels", type=int, default=None, help="mel bins, if not detectable from the module")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(run=_run_probe)


def _run_probe(args: argparse.Namespace) -> int:
    import torch

    from ..core.receptive import detect_n_mels, probe_module

    module = _load_target(args.target).to(args.device)
    n_mels = args.n_mels or detect_n_mels(module)
    if n_mels is None:
        logger.error("cannot tell the mel bins of %s: pass --n-mels", args.target)
        return 2
    with torch.no_grad():
        field = probe_module(module, n_mels)
    sys.stdout.write(f"{args.target}: hop {field.hop} samples/frame, receptive field -{field.left}/+{field.right} "
                     f"frames, context {field.context()} frames, output [B, {', '.join(map(str, field.out_dims))}"
                     f"{', ' if field.out_dims else ''}N]\n")
    return 0


def _add_client(parser: argparse.ArgumentParser) -> None:
    from .client import ENDPOINTS

    parser.add_argument("--url", default="http://127.0.0.1:9880")
    parser.add_argument("--endpoint", default="tts", choices=ENDPOINTS)
    parser.add_argument("--text", action="append", default=None, metavar="LABEL=TEXT",
                        help="a text to send (repeatable); default: built-in short, medium and long Chinese texts")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a request parameter (repeatable; VALUE parsed as JSON when it is JSON), e.g. "
                             "ref_audio_path=/srv/ref.wav, prompt_text=..., voice_name=alice")
    parser.add_argument("--requests", type=int, default=3, help="requests per text")
    parser.add_argument("--warmup", type=int, default=0,
                        help="untimed requests per text first (a service compiles or captures on first requests)")
    parser.add_argument("--concurrency", type=int, default=1, help="callers at once")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument("--method", default="post", choices=("get", "post"))
    parser.add_argument("--json", default=None, help="write every request and the summary to this JSON file")
    parser.set_defaults(run=_run_client)


def _run_client(args: argparse.Namespace) -> int:
    import json

    from . import client

    texts = dict(_pairs(args.text, "--text")) if args.text else dict(client.TEXTS)
    params = {key: _json_or_text(value) for key, value in _pairs(args.param, "--param")}
    try:
        config = client.ClientConfig(url=args.url, endpoint=args.endpoint, texts=texts, requests=args.requests,
                                     warmup=args.warmup, concurrency=args.concurrency, timeout_s=args.timeout,
                                     method=args.method, params=params)
    except ValueError as exc:
        raise SystemExit(f"client: {exc}") from None
    report = client.run(config, progress=True)
    sys.stdout.write(client.table(report) + "\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
    return 0 if report["summary"]["ok"] else 1


def _pairs(items: Sequence[str], option: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{option} {item!r}: expected KEY=VALUE")
        pairs.append((key, value))
    return pairs


def _json_or_text(value: str):
    import json

    try:
        return json.loads(value)
    except ValueError:
        return value


def _load_target(target: str):
    from torch import nn

    from ..models import build_model

    if target in MODELS:
        return build_model(target)
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise SystemExit(f"{target!r} is neither a built-in model nor module:attribute")
    obj = getattr(importlib.import_module(module_name), attribute)
    obj = obj if isinstance(obj, nn.Module) else obj()
    if not isinstance(obj, nn.Module):
        raise SystemExit(f"{target} is not an nn.Module (nor a factory returning one)")
    return obj.eval()
