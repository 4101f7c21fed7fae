"""`python -m tts_compile bench | probe | client | serve | options`: the command-line entry points. Bad flags are
answered by argparse with one line naming the flag (exit status 2), before anything starts."""

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
    for name, add, text in (("bench", _add_bench, "eager vs optimized on a built-in vocoder, side by side"),
                            ("probe", _add_probe, "receptive field and hop of a vocoder"),
                            ("client", _add_client, "latency and throughput of a running GPT-SoVITS service"),
                            ("serve", _add_serve, "an api_v2- and OpenAI-compatible TTS server over the engine"),
                            ("options", _add_options, "every option of the tts_compile: section, as Markdown")):
        add(commands.add_parser(name, help=text, description=text,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    return args.run(args)


def positive(text: str) -> int:
    """An int >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def lengths(text: str) -> list[int]:
    """Comma-separated ints >= 1 (argparse type)."""
    values = [positive(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} names no length")
    return values


def device(text: str) -> str:
    """cpu, or cuda[:N] on a machine that has that GPU (argparse type)."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: expected cpu or cuda[:N]") from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected cpu or cuda[:N]")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    return text


def _add_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="bigvgan-tiny", choices=sorted(MODELS))
    parser.add_argument("--device", default="cpu", type=device, help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="float32", choices=[d for d in DTYPES if d != "auto"])
    parser.add_argument("--lengths", default=list(bench.DEFAULT_LENGTHS), type=lengths,
                        help="comma-separated mel lengths in frames")
    parser.add_argument("--mode", default="reduce-overhead", choices=COMPILE_MODES, help="compile_mode")
    parser.add_argument("--chunk-size", type=positive, default=500, help="chunk_size")
    parser.add_argument("--max-batch", type=positive, default=4, help="max_batch")
    parser.add_argument("--repeats", type=positive, default=5, help="timed calls per length (median reported)")
    parser.add_argument("--max-eager-frames", type=positive, default=20000, help="skip the eager baseline above this")
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
    report = bench.run(args.model, device=args.device, dtype=args.dtype, lengths=args.lengths, repeats=args.repeats,
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
    parser.add_argument("--n-mels", type=positive, default=None, help="mel bins, if not detectable from the module")
    parser.add_argument("--device", default="cpu", type=device, help="cpu or cuda[:N]")
    parser.set_defaults(run=_run_probe, parser=parser)


def _run_probe(args: argparse.Namespace) -> int:
    import torch

    from ..core.receptive import detect_n_mels, probe_module

    module = _load_target(args.target, args.parser).to(args.device)
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
    parser.add_argument("--requests", type=positive, default=3, help="requests per text")
    parser.add_argument("--warmup", type=int, default=0,
                        help="untimed requests per text first (a service compiles or captures on first requests)")
    parser.add_argument("--concurrency", type=positive, default=1, help="callers at once")
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


def _add_serve(parser: argparse.ArgumentParser) -> None:
    from ..gpt_sovits.versions import VERSIONS

    parser.add_argument("--config", default=None, metavar="TTS_INFER_YAML",
                        help="upstream's tts_infer.yaml: its pipeline serves (upstream's code from GPT_SOVITS_HOME, "
                             "or the current directory); without it, the built-in stand-in models on the CPU")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (another than 127.0.0.1 exposes it)")
    parser.add_argument("--port", type=positive, default=9880)
    parser.add_argument("--voices-dir", default="voices",
                        help="where registered voices are kept; the only place reference audio paths may point to")
    parser.add_argument("--queue-size", type=positive, default=None,
                        help="requests held at most, then 503 (default: the config's queue_size, 256)")
    parser.add_argument("--api-key", default=None,
                        help="bearer token the routes that change state require (default: $TTS_COMPILE_API_KEY)")
    parser.add_argument("--version", default="v2ProPlus", choices=sorted(VERSIONS),
                        help="GPT-SoVITS version of the built-in stand-in models (without --config)")
    parser.add_argument("--max-text-chars", type=positive, default=5000, help="a request's text at most (then 400)")
    parser.add_argument("--max-body-mib", type=positive, default=16, help="a request's body at most (then 413)")
    parser.add_argument("--voice-cache-mib", type=positive, default=512,
                        help="memory for prepared voices (least recently used dropped; they stay on disk)")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="seconds a request may take (then 504)")
    parser.add_argument("--replicas", type=positive, default=None,
                        help="serve through Ray Serve with this many replicas, each its own engine (one GPU each "
                             "where there are GPUs; a local Ray instance; needs the ray extra); absent: one process")
    parser.add_argument("--max-replicas", type=positive, default=None,
                        help="with --replicas: scale up to this many on ongoing requests per replica")
    parser.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    try:
        from ..serve import Settings, serve
        from ..serve.backend import builder
    except ImportError as exc:
        raise SystemExit(f"serve needs the serve extra ({exc.name} is missing): pip install 'tts-compile[serve]'")
    from ..core.config import ConfigError

    if not args.request_timeout > 0:
        raise SystemExit(f"serve: --request-timeout {args.request_timeout}: expected seconds > 0")
    settings = Settings(Path(args.voices_dir), api_key=args.api_key or os.environ.get("TTS_COMPILE_API_KEY"),
                        max_text_chars=args.max_text_chars, max_body_bytes=args.max_body_mib * 2**20,
                        request_timeout_s=args.request_timeout, voice_cache_mib=args.voice_cache_mib,
                        exposed=args.host not in ("127.0.0.1", "localhost", "::1"))
    if args.config is not None and not Path(args.config).is_file():
        raise SystemExit(f"serve: --config {args.config}: no such file")
    try:
        build = builder(args.config, args.version, args.queue_size)
    except ConfigError as exc:
        raise SystemExit(f"serve: --config {args.config}: {exc}") from None
    if args.config is None:
        logger.info("serve: no --config: the built-in stand-in models (random weights, CPU): every route runs, the "
                    "audio is noise")
    if args.replicas is None:
        if args.max_replicas is not None:
            raise SystemExit("serve: --max-replicas needs --replicas")
        serve(settings, build, args.host, args.port)
        return 0
    try:
        from ..serve import replicas
    except ImportError as exc:
        raise SystemExit(f"serve --replicas needs the ray extra ({exc.name} is missing): "
                         "pip install 'tts-compile[ray]'")
    import torch

    gpus = 1.0 if args.config is not None and torch.cuda.is_available() else 0.0
    replicas.run(settings, build, args.replicas, args.host, args.port, args.max_replicas, gpus)
    return 0


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


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(run=_run_options)


def _run_options(args: argparse.Namespace) -> int:
    sys.stdout.write(options_markdown())
    return 0


def options_markdown() -> str:
    """docs/configuration.md: every option of the `tts_compile:` section, its default and its documentation."""
    from dataclasses import fields

    from ..core.config import SECTION, SEED_KEYS, OptimizeConfig
    from ..engine.config import EngineConfig
    from ..gpt_sovits.config import PipelineConfig

    seeds = {name: key for key, name in SEED_KEYS.items()}
    shared, pipeline = {f.name for f in fields(OptimizeConfig)}, {f.name for f in fields(PipelineConfig)}
    lines = ["# Configuration", "",
             "Generated by `python -m tts_compile options` from the options' own documentation. Keyword arguments of "
             "`optimize_vocoder` / `optimize_pipeline` override `tts_infer.yaml`, which overrides these defaults. "
             f"In `tts_infer.yaml` every option goes in a top-level `{SECTION}:` section, except the two seed keys "
             f"({', '.join(f'`{k}`' for k in SEED_KEYS)}), which stay at the top level "
             "(`configs/tts_infer.yaml` is a complete example). `TTS_COMPILE_DISABLE=1` in the environment forces "
             "every stage eager. A bad value raises a `ConfigError` naming the option, the value and what is allowed.",
             ""]
    for title, options in (("Every stage (`OptimizeConfig`)", fields(OptimizeConfig)),
                           ("GPT-SoVITS stages (`gpt_sovits.PipelineConfig`)",
                            [f for f in fields(PipelineConfig) if f.name not in shared]),
                           ("The serving engine (`engine.EngineConfig`)",
                            [f for f in fields(EngineConfig) if f.name not in pipeline])):
        lines += [f"## {title}", "", "| option | default | meaning and cost |", "|---|---|---|"]
        for f in options:
            name = f"`{f.name}`" + (f" (seed key `{seeds[f.name]}`)" if f.name in seeds else "")
            lines.append(f"| {name} | `{f.default!r}` | {f.metadata['doc']} |")
        lines.append("")
    return "\n".join(lines)


def _load_target(target: str, parser: argparse.ArgumentParser):
    from torch import nn

    from ..models import build_model

    if target in MODELS:
        return build_model(target)
    module_name, _, attribute = target.partition(":")
    if not attribute:
        parser.error(f"target {target!r} is neither a built-in model ({', '.join(sorted(MODELS))}) nor "
                     "module:attribute")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        parser.error(f"target {target!r}: {exc}")
    obj = obj if isinstance(obj, nn.Module) else obj() if callable(obj) else obj
    if not isinstance(obj, nn.Module):
        parser.error(f"target {target!r} is not an nn.Module (nor a factory returning one)")
    return obj.eval()
