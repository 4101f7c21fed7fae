"""Stand-ins for GPT-SoVITS's models with random weights: the T2S decoder (`t2s`), the SoVITS synthesizers (`vits`:
v1-v2ProPlus's `SynthesizerTrn`, v3/v4's `SynthesizerTrnV3`) and the v3/v4 flow-matching model (`dit`).

Written from the published facts (docs: gpt-sovits-upstream.md), not from upstream's code, with upstream's attribute
names, call signatures, masks and order of operations, so CI tests every stage without a GPT-SoVITS checkout.
`t2s.load_t2s_checkpoint` builds the T2S decoder at full size from upstream's checkpoint.
"""
