"""What the GPU benchmarks share: upstream GPT-SoVITS's own models with random weights, timing, and result files.

Upstream comes from the checkout named by GPT_SOVITS_HOME (`tts_compile.gpt_sovits.upstream`). Timing does not
depend on weight values; random weights never emit EOS once its logit row is zeroed, so `early_stop_num` fixes every
token count. `--smoke` sizes (tiny models on the CPU) check a script, not a speed.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from tts_compile.gpt_sovits.upstream import use_upstream
from tts_compile.tools.bench import timed  # noqa: F401 - the one timing helper: median after warm-up, synced

os.environ.setdefault("TQDM_DISABLE", "1")  # upstream's T2S draws a progress bar per decode
log = logging.getLogger("benchmarks")
CONFIGS = {"v1": "s2.json", "v2": "s2.json", "v2Pro": "s2v2Pro.json", "v2ProPlus": "s2v2ProPlus.json",
           "v3": "s2.json", "v4": "s2.json"}
TINY_T2S = dict(n_layer=2, hidden_dim=64, embedding_dim=64, head=4)


def setup(argv_smoke: bool) -> tuple[Path, torch.device, torch.dtype]:
    """Logging, upstream on the import path; (upstream's GPT_SoVITS folder, device, dtype) for a run."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("tts_compile").setLevel(logging.WARNING)
    root = use_upstream()
    if argv_smoke:
        return root, torch.device("cpu"), torch.float32
    return root, torch.device("cuda"), torch.float16


def t2s_model(root: Path, device: torch.device, dtype: torch.dtype, smoke: bool) -> torch.nn.Module:
    """Upstream's `Text2SemanticDecoder` of s1longer-v2.yaml (24 layers, 512-d), seed 0, EOS logit row zeroed."""
    from AR.models.t2s_model import Text2SemanticDecoder

    config = yaml.safe_load((root / "configs/s1longer-v2.yaml").read_text())
    if smoke:
        config["model"].update(TINY_T2S)
    torch.manual_seed(0)
    model = Text2SemanticDecoder(config=config, top_k=3).eval()
    with torch.no_grad():
        model.ar_predict_layer.weight[model.EOS].zero_()
    return model.to(device, dtype)


def synthesizer(root: Path, version: str, device: torch.device, dtype: torch.dtype, smoke: bool) -> torch.nn.Module:
    """Upstream's `SynthesizerTrn` (v1-v2ProPlus) or `SynthesizerTrnV3` (v3/v4) from its config, seed 0; with
    `smoke`, v3/v4 get a tiny DiT."""
    from module import models

    hps = json.loads((root / "configs" / CONFIGS[version]).read_text())
    spec, segment = hps["data"]["filter_length"] // 2 + 1, hps["train"]["segment_size"] // hps["data"]["hop_length"]
    kwargs = {**hps["model"], "semantic_frame_rate": "25hz", "version": version}
    torch.manual_seed(0)
    cls = models.SynthesizerTrnV3 if version in ("v3", "v4") else models.SynthesizerTrn
    vits = cls(spec, segment, n_speakers=hps["data"]["n_speakers"], **kwargs)
    if smoke and version in ("v3", "v4"):
        from f5_tts.model import DiT

        vits.cfm = models.CFM(100, DiT(dim=64, depth=2, heads=4, ff_mult=2, text_dim=512, conv_layers=4))
    return vits.to(device, dtype).eval()


def vocoder(version: str, device: torch.device, dtype: torch.dtype, smoke: bool) -> torch.nn.Module:
    """v3: BigVGAN v2 24 kHz 100-band 256x (upstream's vendored class); v4: upstream's 48 kHz `Generator`."""
    torch.manual_seed(0)
    if version == "v3":
        from BigVGAN.bigvgan import BigVGAN
        from BigVGAN.env import AttrDict

        size = dict(upsample_rates=[4, 4, 2, 2, 2, 2], upsample_kernel_sizes=[8, 8, 4, 4, 4, 4],
                    upsample_initial_channel=1536, resblock_kernel_sizes=[3, 7, 11],
                    resblock_dilation_sizes=[[1, 3, 5]] * 3)
        if smoke:
            size = dict(upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8], upsample_initial_channel=32,
                        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]])
        model = BigVGAN(AttrDict(num_mels=100, resblock="1", activation="snakebeta", snake_logscale=True,
                                 use_tanh_at_final=False, use_bias_at_final=False, **size))
    else:
        from module.models import Generator

        model = Generator(initial_channel=100, resblock="1", resblock_kernel_sizes=[3, 7, 11],
                          resblock_dilation_sizes=[[1, 3, 5]] * 3, upsample_rates=[10, 6, 2, 2, 2],
                          upsample_initial_channel=32 if smoke else 512, upsample_kernel_sizes=[20, 12, 4, 4, 4],
                          gin_channels=0, is_bias=True)
    model.remove_weight_norm()
    return model.to(device, dtype).eval()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()}, smoke)"


def write(path: str | os.PathLike, results: dict[str, Any], device: torch.device) -> None:
    """`results` with the date, device, versions and the command that produced them, as JSON at `path`."""
    header = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "device": device_name(device), "torch": torch.__version__,
              "command": " ".join(["python", *map(shlex.quote, sys.argv)])}
    Path(path).write_text(json.dumps({**header, **results}, indent=1))
    log.info("wrote %s", path)


def agreement(a: torch.Tensor, b: torch.Tensor) -> int:
    """Leading tokens that agree."""
    differ = (a != b).nonzero()
    return int(differ[0]) if len(differ) else len(a)
