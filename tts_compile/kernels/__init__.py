"""Fused kernels, each a `tts_compile::` torch op with a plain-torch reference of the same function.

`anti_aliased_snake` (BigVGAN's upsample x2 -> SnakeBeta -> downsample x2): Triton on CUDA
(`antialias_triton`), the polyphase torch reference `anti_aliased_snake_beta` elsewhere.
`t2s_decode_step` (one T2S decode step through every layer and the logits): Triton on CUDA (`t2s_triton`), the
torch layers `decode_step_reference` elsewhere.
`t2s_sample.sample` (the T2S sampling step before it: penalty, top-k, softmax, the race against torch's exponential
draw, EOS flags, the next input): one Triton launch on CUDA (`t2s_sample_triton`), torch ops elsewhere; a plain
function (the step is captured by CUDA graphs, not traced).
`decoder_pointwise.pointwise` (between two convolutions of the padded HiFi-GAN decoder: bias, residual, the blocks'
sum and mean, a leaky ReLU zeroed past the valid length): one Triton launch on CUDA (`decoder_pointwise_triton`),
torch ops elsewhere; a plain function, for the same reason.
"""

from .antialias import anti_aliased_snake, anti_aliased_snake_beta, anti_aliased_snake_polyphase, downsampler_band
from .t2s_decode import decode_step_reference, t2s_decode_step

__all__ = ["anti_aliased_snake", "anti_aliased_snake_beta", "anti_aliased_snake_polyphase", "decode_step_reference",
           "downsampler_band", "t2s_decode_step"]
