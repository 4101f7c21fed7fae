"""Generic fused kernels, each a `tts_compile::` torch op (or a plain function where it is captured, not traced) with
a plain-torch reference of the same function. GPT-SoVITS's own kernels live in `gpt_sovits.kernels`.

`anti_aliased_snake` (BigVGAN's upsample x2 -> SnakeBeta -> downsample x2): Triton on CUDA
(`antialias_triton`), the polyphase torch reference `anti_aliased_snake_beta` elsewhere.
`decoder_pointwise.pointwise` (between two convolutions: bias, residual, a sum and mean of blocks, a leaky ReLU
zeroed past a valid length): one Triton launch on CUDA (`decoder_pointwise_triton`), torch ops elsewhere; a plain
function (captured by CUDA graphs, not traced).
"""

from .antialias import anti_aliased_snake, anti_aliased_snake_beta, anti_aliased_snake_polyphase, downsampler_band

__all__ = ["anti_aliased_snake", "anti_aliased_snake_beta", "anti_aliased_snake_polyphase", "downsampler_band"]
