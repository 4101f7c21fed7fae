"""GPT-SoVITS's T2S kernels, each with a plain-torch reference of the same function.

`t2s_decode_step` (one T2S decode step through every layer and the logits): a `tts_compile::` op, Triton on CUDA
(`t2s_triton`), the torch layers `decode_step_reference` elsewhere.
`t2s_sample.sample` (the sampling step before it: penalty, top-k, softmax, the race against torch's exponential
draw, EOS flags, the next input): one Triton launch on CUDA (`t2s_sample_triton`), torch ops elsewhere; a plain
function (the step is captured by CUDA graphs, not traced).
"""

from .t2s_decode import decode_step_reference, t2s_decode_step

__all__ = ["decode_step_reference", "t2s_decode_step"]
