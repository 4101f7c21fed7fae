"""Fused kernels, each a `tts_compile::` torch op with a plain-torch reference of the same function.

`anti_aliased_snake` (BigVGAN's upsample x2 -> SnakeBeta -> downsample x2): Triton on CUDA
(`antialias_triton`), the polyphase torch reference `anti_aliased_snake_beta` elsewhere.
"""

from .antialias import anti_aliased_snake, anti_aliased_snake_beta

__all__ = ["anti_aliased_snake", "anti_aliased_snake_beta"]
