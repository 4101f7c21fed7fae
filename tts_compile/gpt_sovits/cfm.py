"""`optimize_cfm`: GPT-SoVITS v3/v4's flow-matching loop (`CFM.inference`) with the n-step Euler loop captured.

Upstream runs 32 (or 8) Euler steps of a 22-layer DiT per window, each step hundreds of small launches from Python
(launch-bound: ~31 ms per step on an H100 for ~1 ms of arithmetic). Here the whole loop of one (batch, frames,
steps) bucket is one CUDA graph; the DiT blocks are compiled by inductor once for every length.

The same function as upstream's, checked term by term:
* noise: drawn by the same `torch.randn` call (shape, dtype, device) before anything else, so a seeded request
  draws what upstream draws; the prompt copy and the prompt zeroing are upstream's;
* conditioner: the text embedding and the step-size embedding are computed once per call, like upstream's
  conditioner cache (they do not depend on the step);
* attention: upstream passes a boolean key mask built from `x_lens`; when every `x_lens` equals the window length
  (every GPT-SoVITS call site) the mask is all True, so the blocks run without it, which lets SDPA pick its flash
  kernels. Any other `x_lens` goes to upstream's own `inference`;
* times: `t` accumulates `1 / n` in a Python float and is cast per step exactly like upstream (`ones(B) * t`);
  the update `x + d * v` and the re-zeroing of the prompt frames use the same torch operations.
Numerics differ only through kernel choice (flash vs masked attention, inductor's fused elementwise code).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import torch
from torch import nn

from ..core.config import OptimizeConfig
from ..core.rng import own_generator
from .config import PipelineConfig
from .stage import Stage, attach, detach

logger = logging.getLogger(__name__)

ESTIMATOR_PARTS = ("time_embed", "d_embed", "text_embed", "input_embed", "rotary_embed", "transformer_blocks",
                   "norm_out", "proj_out")


def _block(block: nn.Module, h: torch.Tensor, t: torch.Tensor, freqs: torch.Tensor, scale: Any) -> torch.Tensor:
    """One DiT block without a key mask (the compiled unit: one compile serves every block and length)."""
    return block(h, t, mask=None, rope=(freqs, scale))


def _velocity(dit: nn.Module, block: Callable[..., torch.Tensor], x: torch.Tensor, cond: torch.Tensor,
              time: torch.Tensor, dt: torch.Tensor, text: torch.Tensor, rope: tuple[torch.Tensor, Any]) -> torch.Tensor:
    """The estimator's velocity (B, T, mels) for x, cond: (B, mels, T); the conditioner (dt, text, rope) given."""
    t = dit.time_embed(time)
    t += dt
    h = dit.input_embed(x.transpose(2, 1), cond.transpose(2, 1), text)
    residual = h
    for layer in dit.transformer_blocks:
        h = block(layer, h, t, *rope)
    if dit.long_skip_connection is not None:
        h = dit.long_skip_connection(torch.cat((h, residual), dim=-1))
    return dit.proj_out(dit.norm_out(h, t))


def _euler(velocity: Callable[..., torch.Tensor], times: torch.Tensor, step: float, rope: tuple[torch.Tensor, Any],
           x: torch.Tensor, cond: torch.Tensor, text: torch.Tensor, dt: torch.Tensor,
           prompt: torch.Tensor) -> torch.Tensor:
    """n Euler steps from x (B, mels, T); `times` (n, B) per step; `prompt` (1, 1, T) marks frames held at zero."""
    for time_ in times:
        x = x + step * velocity(x, cond, time_, dt, text, rope).transpose(2, 1)
        x = x.masked_fill(prompt, 0)
    return x


class OptimizedCFM(Stage):
    """What `optimize_cfm` installed on one CFM: its `inference`, counters, and the runtime switch."""

    name = "optimize_cfm"
    argument = "cfm"
    expected = f"GPT-SoVITS CFM (in_channels, estimator with {', '.join(ESTIMATOR_PARTS)})"
    methods = ("inference",)
    max_graphs = 8  # a bucket is a (batch, window) pair: a service meets few; its graph holds a whole loop
    capture_after = 2  # serial mode's odd last windows are seen once and never captured

    def __init__(self, cfm: nn.Module, config: PipelineConfig) -> None:
        super().__init__(cfm, config)
        self.cfm = cfm
        self._velocity = functools.partial(_velocity, cfm.estimator, self.execution.compile(_block, dynamic=True))
        self._constants: dict[tuple, Any] = {}

    @classmethod
    def lacks(cls, module: nn.Module) -> list[str]:
        estimator = getattr(module, "estimator", None)
        missing = [name for name in ESTIMATOR_PARTS if not hasattr(estimator, name)]
        return missing or ([] if hasattr(module, "in_channels") else ["in_channels"])

    def inference(self, mu: torch.Tensor, x_lens: torch.Tensor, prompt: torch.Tensor, n_timesteps: int,
                  temperature: float = 1.0, inference_cfg_rate: float = 0) -> torch.Tensor:
        """Upstream's signature and result: mel (B, mels, T) from mu (B, T, features) and prompt (B, mels, P)."""
        args = (mu, x_lens, prompt, n_timesteps, temperature, inference_cfg_rate)
        problem = None if self._eligible(mu, x_lens, n_timesteps, inference_cfg_rate) else \
            "classifier-free guidance, a non-positive step count, or x_lens that mask frames"
        return self.serve("inference", args, problem, self._optimized, torch.inference_mode)

    def _eligible(self, mu: torch.Tensor, x_lens: Any, n_timesteps: int, cfg_rate: float) -> bool:
        """Classifier-free guidance, or an x_lens that masks frames, is upstream's own path."""
        frames = mu.shape[1]
        lens = x_lens.tolist() if isinstance(x_lens, torch.Tensor) else list(x_lens)
        return cfg_rate <= 1e-5 and isinstance(n_timesteps, int) and n_timesteps > 0 and \
            all(int(n) == frames for n in lens)

    def _optimized(self, mu: torch.Tensor, x_lens: Any, prompt: torch.Tensor, n: int, temperature: float,
                   cfg_rate: float) -> torch.Tensor:
        dit = self.cfm.estimator
        batch, frames = mu.shape[0], mu.shape[1]
        x = torch.randn([batch, self.cfm.in_channels, frames], device=mu.device, dtype=mu.dtype,
                        generator=own_generator(mu.device)) * temperature
        p = prompt.size(-1)
        cond = torch.zeros_like(x, dtype=mu.dtype)
        cond[..., :p] = prompt[..., :p]
        x[..., :p] = 0
        held = torch.zeros(1, 1, frames, dtype=torch.bool, device=mu.device)
        held[..., :p] = True
        dt = dit.d_embed(torch.ones(batch, device=mu.device, dtype=mu.dtype) * (1 / n))
        text = dit.text_embed(mu, frames, drop_text=False)
        return self._run((batch, frames, n, mu.dtype, mu.device), (x, cond, text, dt, held))

    def _run(self, key: tuple, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Replay the bucket's graph (captured on its second call), else run the loop without one."""
        wanted = self.due(key)
        return self.run_graph(key, self._loop(key, wanted), inputs, "batch {} x {} frames x {} steps".format(*key),
                              capture=wanted)

    def _loop(self, key: tuple, keep: bool) -> Callable[..., torch.Tensor]:
        """The Euler loop of one bucket with its constants: per-step times (n, B), computed as upstream does, and
        the rotary table. Kept for buckets seen often enough to be captured (a graph reads them in place)."""
        if key in self._constants:
            return self._constants[key]
        batch, frames, n, dtype, device = key
        t, rows = 0, []
        for _ in range(n):
            rows.append(torch.ones(batch, device=device, dtype=dtype) * t)
            t = t + 1 / n
        rope = self.cfm.estimator.rotary_embed.forward_from_seq_len(frames)
        loop = functools.partial(_euler, self._velocity, torch.stack(rows), 1 / n, rope)
        if keep:
            self._constants[key] = loop
        return loop


def optimize_cfm(cfm: nn.Module, config: OptimizeConfig | None = None, **options: Any) -> nn.Module:
    """Patch a GPT-SoVITS v3/v4 `CFM` in place: `cfm.inference` keeps its signature and result, its Euler loop
    runs compiled and captured (a bucket on its second call). The handle (`OptimizedCFM`: optimization_stats,
    switch) is `cfm.tts_compile`. Returns `cfm`."""
    attach(OptimizedCFM, cfm, config, options)
    return cfm


def restore_cfm(cfm: nn.Module) -> nn.Module:
    """Undo `optimize_cfm`: upstream's own `inference` again."""
    return detach(cfm, OptimizedCFM)
