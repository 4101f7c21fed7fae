"""Parity with upstream GPT-SoVITS modules (random weights, CPU, fp32). Needs GPT_SOVITS_HOME: a checkout of
RVC-Boss/GPT-SoVITS (plus x_transformers, einops and torchmetrics, which upstream's modules import); skipped without
it. Marked `upstream`: `python -m pytest -m upstream` runs these alone."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from tts_compile import load_config, optimize_vocoder
from tts_compile.gpt_sovits import optimize_sovits, optimize_t2s
from tts_compile.gpt_sovits.cfm import optimize_cfm
from tts_compile.gpt_sovits.upstream import home, use_upstream
from tts_compile.passes import optimized_copy

pytestmark = [pytest.mark.upstream,
              pytest.mark.skipif(home() is None, reason="GPT_SOVITS_HOME is not set (path to a GPT-SoVITS checkout)")]
CHUNKED = {"compile_mode": "eager", "warmup": "lazy", "chunk_size": 64}  # several windows per call on CPU
FP32_TOLERANCE = 1e-4  # max abs, issue 4 / DESIGN.md


@pytest.fixture(autouse=True)
def _float32_convolutions(monkeypatch):
    """Float32 parity means float32 arithmetic: cuDNN's default TF32 convolutions (10-bit mantissa) put both paths
    ~1e-4 apart on upstream's 8-layer, 512-channel WN stack (measured 1.4e-4 on an H100) before any change of ours."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.fixture(scope="module")
def upstream():
    root = use_upstream()
    from module import models

    return root, models


def _synthesizer(upstream, config: str, version: str):
    root, models = upstream
    hps = json.loads((root / "configs" / config).read_text())
    model_args = {**hps["model"], "semantic_frame_rate": "25hz", "version": version}
    torch.manual_seed(0)
    return models.SynthesizerTrn(hps["data"]["filter_length"] // 2 + 1,
                                 hps["train"]["segment_size"] // hps["data"]["hop_length"],
                                 n_speakers=hps["data"]["n_speakers"], **model_args).eval()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DECODES = [  # version, config, tokens, phones, references (None: one, as a tensor), speed
    ("v2", "s2.json", 60, 30, 1, 1),
    ("v2ProPlus", "s2v2ProPlus.json", 60, 30, 1, 1),
    ("v1", "s2.json", 37, 51, None, 1.25),
    ("v2Pro", "s2v2Pro.json", 41, 12, 2, 0.9),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("version,config,tokens,phones,refs,speed", DECODES)
def test_synthesizer_decode_matches_upstream(upstream, device, version, config, tokens, phones, refs, speed) -> None:
    """optimize_sovits's staged decode (padded encoder, flow and decoder; captured on CUDA) against upstream's
    `SynthesizerTrn.decode` in float32, with the same noise."""
    model = _synthesizer(upstream, config, version).to(device)
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 1024, (1, 1, tokens), generator=gen).to(device)
    text = torch.randint(1, 300, (1, phones), generator=gen).to(device)
    refer = [torch.rand(1, 1025, 100 + 20 * i, generator=gen).to(device) for i in range(refs or 1)]
    sv_emb = [torch.randn(1, 20480, generator=gen).to(device) for _ in refer] if "Pro" in version else None
    if not refs:
        refer, sv_emb = refer[0], sv_emb[0] if sv_emb else None
    args = (codes, text, refer)
    with torch.inference_mode():
        torch.manual_seed(2)  # decode draws its flow noise with randn_like
        expected = model.decode(*args, speed=speed, sv_emb=sv_emb)
        optimize_sovits(model, **{**CHUNKED, "compile_mode": "cudagraphs" if device == "cuda" else "eager"})
        for _ in range(2):  # the first call captures on CUDA, the second replays
            torch.manual_seed(2)
            got = model.decode(*args, speed=speed, sv_emb=sv_emb)
            assert got.shape == expected.shape
            assert float((got - expected).abs().max()) <= FP32_TOLERANCE
    stats = model.tts_compile.optimization_stats()
    assert stats["replays" if device == "cuda" else "direct"] == 6 and stats["failure"] is None
    assert model.tts_compile.decoder is not None  # the decoder ran padded, inside the flow's graph


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("version,tokens,phones,speed", [("v3", 75, 40, 1), ("v3", 23, 9, 0.9), ("v4", 61, 33, 1),
                                                         ("v4", 30, 17, 1.3)])
def test_decode_encp_matches_upstream(upstream, device, version, tokens, phones, speed) -> None:
    """optimize_sovits's staged `decode_encp` (padded encoder and conditioning stack, captured on CUDA) against
    upstream's `SynthesizerTrnV3.decode_encp` in float32: the prompt's call (ge from the reference) and a segment's
    (ge given)."""
    root, models = upstream
    hps = json.loads((root / "configs" / "s2.json").read_text())
    torch.manual_seed(0)
    model = models.SynthesizerTrnV3(hps["data"]["filter_length"] // 2 + 1,
                                    hps["train"]["segment_size"] // hps["data"]["hop_length"],
                                    n_speakers=hps["data"]["n_speakers"],
                                    **{**hps["model"], "semantic_frame_rate": "25hz", "version": version})
    model = model.eval().to(device)
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 1024, (1, 1, tokens), generator=gen).to(device)
    text = torch.randint(1, 300, (1, phones), generator=gen).to(device)
    refer = torch.rand(1, 1025, 120, generator=gen).to(device)
    with torch.inference_mode():
        prompt, ge = model.decode_encp(codes, text, refer)
        segment, _ = model.decode_encp(codes[..., :tokens // 2], text[:, :phones // 2 + 1], refer, ge, speed)
        optimize_sovits(model, **{**CHUNKED, "compile_mode": "cudagraphs" if device == "cuda" else "eager"})
        for _ in range(2):  # the first call captures on CUDA, the second replays
            got, got_ge = model.decode_encp(codes, text, refer)
            got_segment, same_ge = model.decode_encp(codes[..., :tokens // 2], text[:, :phones // 2 + 1], refer, ge,
                                                     speed)
            assert got.shape == prompt.shape and got_segment.shape == segment.shape and same_ge is ge
            assert max(float((got - prompt).abs().max()), float((got_ge - ge).abs().max()),
                       float((got_segment - segment).abs().max())) <= FP32_TOLERANCE
    stats = model.tts_compile.optimization_stats()
    assert stats["replays" if device == "cuda" else "direct"] == 10 and stats["failure"] is None




@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["eager", "reduce-overhead"])
def test_cfm_inference_matches_upstream(upstream, mode, device) -> None:
    """Upstream's CFM with a small DiT (the real one on a GPU: benchmarks/cfm.py), windows as TTS.py sends
    them (x_lens = [T], half prompt); three calls so that a GPU captures the bucket and replays it."""
    from f5_tts.model.backbones.dit import DiT

    torch.manual_seed(0)
    dit = DiT(dim=128, depth=3, heads=4, dim_head=32, ff_mult=2, mel_dim=100, text_dim=512, conv_layers=2)
    cfm = upstream[1].CFM(100, dit).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    mu, prompt = torch.randn(2, 96, 512, generator=gen).to(device), torch.randn(2, 100, 48, generator=gen).to(device)
    lens = torch.LongTensor([96]).to(device)
    torch.manual_seed(3)
    expected = cfm.inference(mu, lens, prompt, 8, inference_cfg_rate=0)
    optimize_cfm(cfm, compile_mode=mode)
    for _ in range(3):
        torch.manual_seed(3)
        got = cfm.inference(mu, lens, prompt, 8, inference_cfg_rate=0)
        assert float((got - expected).abs().max()) <= FP32_TOLERANCE
    stats = cfm.tts_compile.optimization_stats()
    assert stats["fallbacks"] == 0 and stats["eager"] == 0
    assert stats["replays"] == (2 if device == "cuda" and mode != "eager" else 0)


def test_v4_vocoder_matches_upstream(upstream) -> None:
    _, models = upstream
    torch.manual_seed(0)
    vocoder = models.Generator(initial_channel=100, resblock="1", resblock_kernel_sizes=[3, 7, 11],
                               resblock_dilation_sizes=[[1, 3, 5]] * 3, upsample_rates=[10, 6, 2, 2, 2],
                               upsample_initial_channel=512, upsample_kernel_sizes=[20, 12, 4, 4, 4],
                               gin_channels=0, is_bias=True).eval()
    vocoder.remove_weight_norm()  # as upstream does before loading vocoder.pth
    mel = torch.randn(1, 100, 150)
    with torch.inference_mode():
        expected = vocoder(mel)
        got = optimize_vocoder(vocoder, **CHUNKED)(mel)
    assert float((got - expected).abs().max()) <= FP32_TOLERANCE


def test_upstream_bigvgan_matches(upstream) -> None:
    """Upstream's vendored BigVGAN class at a small config (the 24 kHz one takes minutes on 2 CPU cores)."""
    from BigVGAN.bigvgan import BigVGAN
    from BigVGAN.env import AttrDict

    h = AttrDict(num_mels=20, upsample_rates=[4, 2], upsample_kernel_sizes=[8, 4], upsample_initial_channel=32,
                 resblock="1", resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3], [1, 3]],
                 activation="snakebeta", snake_logscale=True, use_tanh_at_final=False, use_bias_at_final=False)
    torch.manual_seed(0)
    vocoder = BigVGAN(h).eval()
    vocoder.remove_weight_norm()
    mel = torch.randn(1, 20, 230)
    with torch.inference_mode():
        expected = vocoder(mel)
        got = optimize_vocoder(vocoder, **CHUNKED)(mel)
        shadow, report = optimized_copy(vocoder, channels_last=True, fuse_activations=True)
        passes = shadow(mel)
    assert float((got - expected).abs().max()) <= FP32_TOLERANCE
    assert report["fused_activations"] == 2 * 2 * 2 * 2 + 1 and report["folded_amp_blocks"] == 2 * 2
    assert float((passes - expected).abs().max()) <= FP32_TOLERANCE


def test_config_survives_upstreams_rewrite(upstream, tmp_path) -> None:
    """Upstream rewrites tts_infer.yaml on every weight load (TTS_Config.save_configs): our keys must survive."""
    pytest.importorskip("torchaudio", reason="upstream's TTS module needs its requirements (torchaudio, ...)")
    from TTS_infer_pack.TTS import TTS_Config

    path = tmp_path / "tts_infer.yaml"
    example = Path(__file__).parents[2] / "configs" / "tts_infer.yaml"
    path.write_text(example.read_text().replace("vocoder_chunk_size: 500", "vocoder_chunk_size: 250"))
    before = load_config(path)
    TTS_Config(str(path)).save_configs()
    assert load_config(path) == before and before.chunk_size == 250


@pytest.fixture(scope="module")
def upstream_t2s(upstream):
    import yaml

    os.environ.setdefault("TQDM_DISABLE", "1")
    from AR.models.t2s_model import Text2SemanticDecoder

    config = yaml.safe_load((upstream[0] / "configs" / "s1longer-v2.yaml").read_text())
    config["model"].update(n_layer=3, hidden_dim=64, embedding_dim=64, head=4)
    torch.manual_seed(0)
    model = Text2SemanticDecoder(config=config, top_k=3).eval()
    with torch.no_grad():
        model.ar_predict_layer.weight.mul_(20.0)  # logits of order 1-10: top-k and the penalty matter
    gen = torch.Generator().manual_seed(4)
    inputs = (torch.randint(0, 700, (1, 12), generator=gen), torch.randint(0, 1024, (1, 9), generator=gen),
              torch.randn(1, 1024, 12, generator=gen))
    return model, inputs


def _upstream_then_optimized(model, run, device: str):
    """`run()` on upstream's decoder, then again after `optimize_t2s` (eager on the CPU, captured on CUDA), which is
    undone afterwards: (upstream's result, ours, the accelerator's counters)."""
    from tts_compile.gpt_sovits.t2s import optimize_t2s, restore_t2s

    expected = run()
    optimize_t2s(model, compile_mode="eager" if device == "cpu" else "cudagraphs")
    try:
        return expected, run(), model.tts_compile.optimization_stats()
    finally:
        restore_t2s(model)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("top_k,seed", [(1, 0), (15, 1), (15, 2)])
def test_t2s_tokens_match_upstream(upstream_t2s, top_k, seed, device) -> None:
    """Greedy and seeded sampled decodes: the same tokens, idx and generator state as upstream's own loops (float32;
    on CUDA through the captured step and the Triton layers)."""
    model, inputs = upstream_t2s
    model = copy.deepcopy(model).to(device)
    phones, prompts, bert = (t.to(device) for t in inputs)
    kwargs = {"top_k": top_k, "top_p": 1, "temperature": 1.0, "repetition_penalty": 1.35, "early_stop_num": 40}

    def both():
        torch.manual_seed(seed)
        naive = next(model.infer_panel_naive(phones, None, prompts, bert, **kwargs))
        batch = model.infer_panel_batch_infer([phones[0]], torch.tensor([12], device=device), prompts, [bert[0]],
                                              **kwargs)
        return naive, batch, torch.rand(3, device=device)

    expected, got, stats = _upstream_then_optimized(model, both, device)
    assert stats["optimized"] == 2 and stats["captures"] == (0 if device == "cpu" else 2)
    assert torch.equal(got[0][0], expected[0][0]) and got[0][1] == expected[0][1]
    assert torch.equal(got[1][0][0], expected[1][0][0]) and got[1][1] == expected[1][1]
    assert torch.equal(got[2], expected[2])  # the generator is left where upstream leaves it


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mute,chunk_length,seed", [(False, 8, 1), (False, 16, 2), (True, 6, 3), (True, 10, 4)])
def test_t2s_streaming_chunks_match_upstream(upstream_t2s, mute, chunk_length, seed, device) -> None:
    """api_v2's streaming modes 3 (fixed length) and 2 (cut at mute-like tokens): the same chunks, last flags and
    generator state as upstream's `infer_panel_naive(streaming_mode=True)` (float32; on CUDA the captured step)."""
    model, inputs = upstream_t2s
    model = copy.deepcopy(model).to(device)
    phones, prompts, bert = (t.to(device) for t in inputs)
    kwargs = {"top_k": 15, "top_p": 1, "temperature": 1.0, "repetition_penalty": 1.35, "early_stop_num": 60,
              "streaming_mode": True, "chunk_length": chunk_length}
    if mute:
        similarity = torch.rand(model.EOS + 1, generator=torch.Generator().manual_seed(seed)).to(device)
        kwargs.update(mute_emb_sim_matrix=similarity, chunk_split_thershold=0.6)

    def stream():
        torch.manual_seed(seed)
        chunks = [(None if c is None else c.tolist(), last)
                  for c, last in model.infer_panel_naive(phones, None, prompts, bert, **kwargs)]
        return chunks, torch.rand(3, device=device)

    expected, got, stats = _upstream_then_optimized(model, stream, device)
    assert stats["optimized"] == 1 and len(expected[0]) >= 2  # a cut at least, then the last chunk
    assert got[0] == expected[0] and torch.equal(got[1], expected[1])


def _tts_run_stream(t2s, vits, inputs, text, refer, sv_emb, kwargs: dict, seed: int) -> list:
    """A stream as `TTS.run` makes it (api_v2's `overlap_length` 2): per token chunk, `decode_streaming` of every
    token so far, the last chunk + overlap tokens kept, their first frames crossfaded with the previous latent.
    Returns (tokens, audio, latent) per chunk."""
    phones, prompts, bert = inputs
    torch.manual_seed(seed)
    out, so_far, latent = [], [], None
    for chunk, _ in t2s.infer_panel_naive(phones, None, prompts, bert, **kwargs):
        if chunk is None:
            break
        so_far.append(chunk)
        overlap = 2 + max(0, 10 - chunk.shape[-1]) if latent is not None else 2
        audio, latent, _ = vits.decode_streaming(
            torch.cat(so_far, dim=-1)[None], text, refer, sv_emb=sv_emb, padding_length=0,
            result_length=None if latent is None else chunk.shape[-1] + overlap,
            overlap_frames=None if latent is None else latent[:, :, -2 * overlap:])
        out.append((chunk.tolist(), audio, latent))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mute,chunk_length,seed", [(False, 8, 1), (True, 6, 3)])
def test_a_whole_stream_matches_upstreams(upstream, upstream_t2s, mute, chunk_length, seed, device) -> None:
    """api_v2's modes 3 and 2 end to end: `optimize_t2s`'s chunks and `optimize_sovits`'s `decode_streaming` give
    upstream's tokens, and its audio and latents within the float32 tolerance, chunk by chunk (same seed)."""
    t2s = copy.deepcopy(upstream_t2s[0]).to(device)
    vits = _synthesizer(upstream, "s2v2ProPlus.json", "v2ProPlus").to(device)
    inputs = tuple(t.to(device) for t in upstream_t2s[1])
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(1, 300, (1, 14), generator=gen).to(device)
    refer, sv_emb = torch.rand(1, 1025, 90, generator=gen).to(device), torch.randn(1, 20480, generator=gen).to(device)
    kwargs = {"top_k": 15, "top_p": 1, "temperature": 1.0, "repetition_penalty": 1.35, "early_stop_num": 50,
              "streaming_mode": True, "chunk_length": chunk_length}
    if mute:
        similarity = torch.rand(t2s.EOS + 1, generator=torch.Generator().manual_seed(seed)).to(device)
        kwargs.update(mute_emb_sim_matrix=similarity, chunk_split_thershold=0.6)
    with torch.inference_mode():
        expected = _tts_run_stream(t2s, vits, inputs, text, refer, sv_emb, kwargs, seed)
        mode = "eager" if device == "cpu" else "cudagraphs"
        optimize_t2s(t2s, compile_mode=mode)
        optimize_sovits(vits, **{**CHUNKED, "compile_mode": mode})
        got = _tts_run_stream(t2s, vits, inputs, text, refer, sv_emb, kwargs, seed)
    assert len(expected) >= 3  # the first chunk, a crossfaded one, the last
    for (tokens, audio, latent), (want_tokens, want_audio, want_latent) in zip(got, expected, strict=True):
        assert tokens == want_tokens and audio.shape == want_audio.shape and latent.shape == want_latent.shape
        assert float((audio - want_audio).abs().max()) <= FP32_TOLERANCE
        assert float((latent - want_latent).abs().max()) <= FP32_TOLERANCE
    stats = t2s.tts_compile.optimization_stats()
    assert stats["optimized"] == 1 and stats["redone"] > 0  # cuts inside a round: the steps after them redone
    stats = vits.tts_compile.optimization_stats()
    assert stats["optimized"] == len(got) and stats["failure"] is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("top_k,seed", [(1, 0), (15, 1), (15, 2)])
def test_t2s_batch_matches_upstream(upstream_t2s, top_k, seed, device) -> None:
    """Left-padded batches (TTS.run's `max_len` one wider than the longest row): the same rows, idx and generator
    state as upstream's `infer_panel_batch_infer`. The EOS logit is raised so rows stop at different steps, and the
    rows that go on draw their noise without them (float32; on CUDA through the captured steps)."""
    model = copy.deepcopy(upstream_t2s[0]).to(device)
    with torch.no_grad():
        model.ar_predict_layer.weight[model.EOS] *= 1.6
    lengths = [12, 7, 9, 3, 10]
    gen = torch.Generator().manual_seed(seed)
    phones = [torch.randint(0, 700, (n,), generator=gen).to(device) for n in lengths]
    bert = [torch.randn(1024, n, generator=gen).to(device) for n in lengths]
    prompts = torch.randint(0, 1024, (1, 9), generator=gen).repeat(len(lengths), 1).to(device)
    kwargs = {"top_k": top_k, "top_p": 1, "temperature": 1.0, "repetition_penalty": 1.35, "early_stop_num": 60,
              "max_len": max(lengths) + 1}

    def batch():
        torch.manual_seed(seed)
        rows, idx = model.infer_panel_batch_infer(phones, torch.tensor(lengths, device=device), prompts, bert, **kwargs)
        return rows, idx, torch.rand(3, device=device)

    expected, got, stats = _upstream_then_optimized(model, batch, device)
    assert stats["optimized"] == 1
    assert got[1] == expected[1] and all(torch.equal(a, b) for a, b in zip(got[0], expected[0]))
    assert torch.equal(got[2], expected[2])
    if top_k > 1:  # measured: these seeds stop rows at different steps inside a chunk
        assert len(set(expected[1])) > 1 and stats["redone"] > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("top_k,seed", [(1, 0), (15, 1)])
def test_t2s_prompt_free_matches_upstream(upstream_t2s, top_k, seed, device) -> None:
    """api_v2's ref_free: no prompt tokens. `infer_panel` and the batch entry (upstream hands its rows to
    `infer_panel_naive`) give upstream's int32 tokens, idx 0 and generator state (float32)."""
    model, inputs = upstream_t2s
    model = copy.deepcopy(model).to(device)
    phones, _, bert = (t.to(device) for t in inputs)
    kwargs = {"top_k": top_k, "top_p": 1, "temperature": 1.0, "repetition_penalty": 1.35, "early_stop_num": 40}
    lengths = torch.tensor([phones.shape[1], 7], device=device)

    def both():
        torch.manual_seed(seed)
        naive = model.infer_panel(phones, None, None, bert, **kwargs)
        batch = model.infer_panel_batch_infer([phones[0], phones[0, :7]], lengths, None, [bert[0], bert[0, :, :7]],
                                              **kwargs)
        return naive, batch, torch.rand(3, device=device)

    expected, got, stats = _upstream_then_optimized(model, both, device)
    assert stats["optimized"] == 3
    assert torch.equal(got[0][0], expected[0][0]) and got[0][0].dtype == expected[0][0].dtype
    assert got[0][1] == expected[0][1] == 0
    assert all(torch.equal(a, b) for a, b in zip(got[1][0], expected[1][0])) and got[1][1] == expected[1][1]
    assert torch.equal(got[2], expected[2])


def test_t2s_checkpoint_decodes_like_upstream(upstream, upstream_t2s, tmp_path) -> None:
    """Upstream's decoder saved as its `.ckpt` layout (config + `model.` weights) and loaded by `optimize_t2s`
    without upstream's code: the same tokens, idx and generator state as upstream's own model (float32, CPU)."""
    import yaml

    from tts_compile.gpt_sovits.t2s import optimize_t2s

    model, (phones, prompts, bert) = upstream_t2s
    config = yaml.safe_load((upstream[0] / "configs" / "s1longer-v2.yaml").read_text())
    config["model"].update(n_layer=3, hidden_dim=64, embedding_dim=64, head=4)  # the fixture's sizes
    torch.save({"config": config, "weight": {f"model.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "s1.ckpt")
    loaded = optimize_t2s(tmp_path / "s1.ckpt", compile_mode="eager")
    kwargs = {"top_p": 1, "temperature": 1.0, "repetition_penalty": 1.35, "early_stop_num": 40}
    for top_k, seed in ((1, 0), (15, 1)):
        results = []
        for decoder in (model, loaded):
            torch.manual_seed(seed)
            y, idx = next(decoder.infer_panel_naive(phones, None, prompts, bert, top_k=top_k, **kwargs))
            results.append((y, idx, torch.rand(3)))
        assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
        assert torch.equal(results[0][2], results[1][2])
    assert loaded.tts_compile.optimization_stats()["optimized"] == 2


FREQUENCY_DRAWS = 1500  # seeded first-step samples for the chi-square test
CHI2_Z = 3.09  # standard-normal quantile of the test's 0.1% level


def _chi2_critical(df: int, z: float = CHI2_Z) -> float:
    """Upper chi-square quantile (Wilson-Hilferty), good to ~1% for df >= 2."""
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def test_t2s_first_tokens_follow_upstreams_probabilities(upstream_t2s) -> None:
    """First sampled tokens over many seeds against upstream's first-step probabilities (its own logits through its
    own `logits_to_probs`): nothing outside the top-k support, Pearson's chi-square below the 0.1% critical value."""
    from AR.models.utils import logits_to_probs

    from tts_compile.gpt_sovits.t2s import optimize_t2s, restore_t2s

    model, (phones, prompts, bert) = upstream_t2s
    sampling = {"top_k": 15, "top_p": 1, "temperature": 1.0, "repetition_penalty": 1.35}
    logits = []
    hook = model.ar_predict_layer.register_forward_hook(lambda module, args, out: logits.append(out.detach()))
    try:
        next(model.infer_panel_naive(phones, None, prompts, bert, early_stop_num=0, **sampling))
    finally:
        hook.remove()
    probs = logits_to_probs(logits[0][:, :-1].clone(), previous_tokens=prompts, **sampling)[0].double()  # no EOS yet
    optimize_t2s(model, compile_mode="eager")
    try:
        counts = torch.zeros_like(probs)
        for seed in range(FREQUENCY_DRAWS):
            torch.manual_seed(seed)
            y, _ = model.infer_panel(phones, None, prompts, bert, early_stop_num=0, **sampling)
            counts[y[0, prompts.shape[1]]] += 1
    finally:
        restore_t2s(model)
    assert counts[probs == 0].sum() == 0
    expected = FREQUENCY_DRAWS * probs
    rare = (expected < 5) & (probs > 0)  # merged into one cell, as the test's approximation needs
    cells_got = torch.cat((counts[expected >= 5], counts[rare].sum()[None]))
    cells_expected = torch.cat((expected[expected >= 5], expected[rare].sum()[None]))
    keep = cells_expected > 0
    statistic = float(((cells_got - cells_expected)[keep] ** 2 / cells_expected[keep]).sum())
    assert int(keep.sum()) >= 3, "the first-step distribution is too peaked for a frequency test"
    assert statistic < _chi2_critical(int(keep.sum()) - 1)
