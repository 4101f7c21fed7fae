"""Fused kernels, each a `tts_compile::` torch op with a plain-torch reference of the same function.

`anti_aliased_snake` (BigVGAN's upsample x2 -> SnakeBeta -> downsample x2): Triton on CUDA
(`antialias_triton`), the polyphase torch reference `anti_aliased_snake_beta` elsewhere.
`t2s_decode_step` (one T2S decode step through every layer and the logits): Triton on CUDA (`t2s_triton`), the
torch layers `decode_step_reference` elsewhere.
"""

from .antialias import anti_aliased_snake, anti_aliased_snake_beta
from .t2s_decode import decode_step_reference, t2s_decode_step

__all__ = ["anti_aliased_snake", "anti_aliased_snake_beta", "decode_step_reference", "t2s_decode_step"]
