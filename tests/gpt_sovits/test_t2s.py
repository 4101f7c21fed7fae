"""optimize_t2s on the stand-in T2S model (upstream's interface, a no-cache reference decode), CPU, float32: the
static-cache decode gives the reference's tokens, idx and generator state, or hands the call to it."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.gpt_sovits.models.t2s import build_t2s
from tts_compile.gpt_sovits.t2s import CHECK_EVERY, MAX_ROWS, T2SAccelerator, optimize_t2s, restore_t2s

EAGER = {"compile_mode": "eager"}  # the static-cache decode without compile (no graphs on CPU anyway)


def _inputs(phones: int, prompt: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 40, (1, phones), generator=gen), torch.randint(0, 64, (1, prompt), generator=gen),
            torch.randn(1, 1024, phones, generator=gen))


def _both_apis(model, inputs, seed: int, **kwargs):
    phones, prompts, bert = inputs
    torch.manual_seed(seed)
    naive = model.infer_panel(phones, None, prompts, bert, **kwargs)
    batch = model.infer_panel_batch_infer([phones[0]], None, prompts, [bert[0]], **kwargs)
    return naive, batch, torch.rand(2)


def _assert_same(got, expected) -> None:
    assert torch.equal(got[0][0], expected[0][0]) and got[0][1] == expected[0][1]
    assert torch.equal(got[1][0][0], expected[1][0][0]) and got[1][1] == expected[1][1]
    assert torch.equal(got[2], expected[2])  # generator state after the call


@settings(max_examples=10, deadline=None)
@given(phones=st.integers(1, 12), prompt=st.integers(1, 10), top_k=st.sampled_from([1, 3, 64, 100]),
       top_p=st.sampled_from([1.0, 0.8]), temperature=st.sampled_from([1.0, 0.6]),
       penalty=st.sampled_from([1.0, 1.35]), early=st.sampled_from([0, 5, 2 * CHECK_EVERY + 3]),
       seed=st.integers(0, 3), kernels=st.booleans())
def test_decode_equals_the_reference(phones, prompt, top_k, top_p, temperature, penalty, early, seed,
                                     kernels) -> None:
    """Both step forms (the `t2s_decode_step` op, the torch layers) give the reference's tokens."""
    model = build_t2s(seed=seed)
    kwargs = {"top_k": top_k, "top_p": top_p, "temperature": temperature, "repetition_penalty": penalty,
              "early_stop_num": early}
    inputs = _inputs(phones, prompt, seed)
    expected = _both_apis(model, inputs, seed, **kwargs)
    optimize_t2s(model, **EAGER, t2s_kernels=kernels)
    _assert_same(_both_apis(model, inputs, seed, **kwargs), expected)
    stats = model.tts_compile.optimization_stats()
    assert stats["optimized"] == 2 and stats["eager"] == 0
    assert stats["syncs"] <= 2 * (stats["steps"] // CHECK_EVERY + 1)  # one EOS read per chunk, not per token


def test_eos_and_early_stop_slicing() -> None:
    model = build_t2s()
    with torch.no_grad():
        model.h.layers[-1].norm2.bias[0] = 100.0  # one hidden unit always large ...
        model.ar_predict_layer.weight[:, 0] = 0.0
        model.ar_predict_layer.weight[model.EOS, 0] = 1.0  # ... and read only by the EOS logit
    inputs = _inputs(5, 4)
    expected = _both_apis(model, inputs, 0, top_k=1, early_stop_num=-1)
    assert expected[0][1] == 11 and expected[0][0].shape[1] == 4 + 11  # EOS at the first step it is allowed
    optimize_t2s(model, **EAGER)
    _assert_same(_both_apis(model, inputs, 0, top_k=1, early_stop_num=-1), expected)


def _batch(lengths: list[int], prompt: int, seed: int):
    """Rows of phones of the given lengths with their BERT features, one shared prompt (as TTS.run builds them)."""
    gen = torch.Generator().manual_seed(seed)
    phones = [torch.randint(0, 40, (n,), generator=gen) for n in lengths]
    bert = [torch.randn(1024, n, generator=gen) for n in lengths]
    return phones, torch.randint(0, 64, (1, prompt), generator=gen).repeat(len(lengths), 1), bert


def _batched(model, inputs, seed: int, **kwargs):
    phones, prompts, bert = inputs
    torch.manual_seed(seed)
    rows, indices = model.infer_panel_batch_infer(phones, torch.tensor([len(p) for p in phones]), prompts, bert,
                                                  **kwargs)
    return rows, indices, torch.rand(2)


def _assert_same_batch(got, expected) -> None:
    assert len(got[0]) == len(expected[0]) and all(torch.equal(a, b) for a, b in zip(got[0], expected[0]))
    assert got[1] == expected[1] and torch.equal(got[2], expected[2])


@settings(max_examples=10, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5), extra=st.integers(0, 3),
       prompt=st.integers(1, 8), top_k=st.sampled_from([1, 3, 64]), temperature=st.sampled_from([1.0, 0.6]),
       penalty=st.sampled_from([1.0, 1.35]), early=st.sampled_from([0, 5, 2 * CHECK_EVERY + 3]),
       seed=st.integers(0, 3), kernels=st.booleans())
def test_batched_decode_equals_the_reference(lengths, extra, prompt, top_k, temperature, penalty, early, seed,
                                             kernels) -> None:
    """Left-padded rows decoded together (padded further by `max_len`) give the reference's rows, idx and generator
    state: rows leave the batch at their own stops, with upstream's draw shapes."""
    model = build_t2s(seed=seed)
    kwargs = {"top_k": top_k, "top_p": 1.0, "temperature": temperature, "repetition_penalty": penalty,
              "early_stop_num": early, "max_len": max(lengths) + extra}
    inputs = _batch(lengths, prompt, seed)
    expected = _batched(model, inputs, seed, **kwargs)
    optimize_t2s(model, **EAGER, t2s_kernels=kernels)
    _assert_same_batch(_batched(model, inputs, seed, **kwargs), expected)
    stats = model.tts_compile.optimization_stats()
    assert stats["optimized"] == 1 and stats["eager"] == 0


def test_rows_stopping_inside_a_chunk_are_replayed_exactly() -> None:
    """Rows stop at different steps inside one chunk of CHECK_EVERY steps: the chunk is redone up to each stop, and
    rows, idx and generator state are still the reference's (a seed measured to stop rows at 46, 53 and 57)."""
    model = build_t2s(seed=2)
    kwargs = {"top_k": 64, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.35, "early_stop_num": 60}
    inputs = _batch([5, 9, 3], 4, 2)
    expected = _batched(model, inputs, 2, **kwargs)
    assert len(set(expected[1])) == 3 and max(expected[1]) < 60
    optimize_t2s(model, **EAGER)
    _assert_same_batch(_batched(model, inputs, 2, **kwargs), expected)
    assert model.tts_compile.optimization_stats()["redone"] > 0


@settings(max_examples=8, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=3), top_k=st.sampled_from([1, 15, 64]),
       penalty=st.sampled_from([1.0, 1.35]), early=st.sampled_from([0, 5, 2 * CHECK_EVERY + 3]), seed=st.integers(0, 3))
def test_prompt_free_decode_equals_the_reference(lengths, top_k, penalty, early, seed) -> None:
    """Without a prompt (api_v2's ref_free): upstream's naive loop per row, its int32 tokens and idx 0, through both
    entry points; the same tokens and generator state."""
    model = build_t2s(seed=seed)
    phones, _, bert = _batch(lengths, 1, seed)
    kwargs = {"top_k": top_k, "repetition_penalty": penalty, "early_stop_num": early}

    def both():
        torch.manual_seed(seed)
        naive = model.infer_panel(phones[0][None], None, None, bert[0][None], **kwargs)
        batch = model.infer_panel_batch_infer(phones, None, None, bert, **kwargs)
        return naive, batch, torch.rand(2)

    expected = both()
    assert expected[0][0].dtype == torch.int32 and expected[0][1] == 0
    optimize_t2s(model, **EAGER)
    got = both()
    assert torch.equal(got[0][0], expected[0][0]) and got[0][0].dtype == torch.int32 and got[0][1] == 0
    _assert_same_batch((*got[1], got[2]), (*expected[1], expected[2]))
    stats = model.tts_compile.optimization_stats()
    assert stats["optimized"] == 1 + len(lengths) and stats["eager"] == 1  # the batch call hands rows to naive


def test_kv_caches_beyond_the_budget_are_dropped_oldest_first(monkeypatch) -> None:
    """A service that meets many batch sizes keeps at most CACHE_BUDGET bytes of caches (the newest bucket always),
    and a dropped bucket decodes exactly when it comes back."""
    from tts_compile.gpt_sovits import t2s

    model = build_t2s()
    inputs = {rows: _batch([5] * rows, 4, rows) for rows in (1, 2, 3)}
    kwargs = {"top_k": 15, "early_stop_num": 5}
    expected = {rows: _batched(model, inputs[rows], 0, **kwargs) for rows in inputs}
    optimize_t2s(model, **EAGER)
    states = model.tts_compile._states
    one_row = _batched(model, inputs[1], 0, **kwargs)
    monkeypatch.setattr(t2s, "CACHE_BUDGET", 3 * sum(s.k.nbytes + s.v.nbytes for s in states.values()))  # 3 rows
    _assert_same_batch(one_row, expected[1])
    kept = []
    for rows in (2, 3, 1):  # row buckets 2 (1 + 2 rows fit), 4 (alone over the budget: kept, the others dropped), 1
        _assert_same_batch(_batched(model, inputs[rows], 0, **kwargs), expected[rows])
        kept.append([key[1] for key in states])
    assert kept == [[1, 2], [4], [1]]


def test_unusual_batches_go_to_upstreams_methods() -> None:
    model = optimize_t2s(build_t2s(), **EAGER)
    phones, prompts, bert = _inputs(5, 4)
    rows, _, batch_bert = _batch([5, 7], 4, 0)
    model.infer_panel_batch_infer(rows, torch.tensor([5, 6]), prompts.repeat(2, 1), batch_bert, top_k=1,
                                  early_stop_num=3)  # x_lens that disagree with the rows: upstream's masks
    many, prompts_many, bert_many = _batch([3] * (MAX_ROWS + 1), 4, 0)
    model.infer_panel_batch_infer(many, None, prompts_many, bert_many, top_k=1, early_stop_num=3)
    stats = model.tts_compile.optimization_stats()
    assert stats["eager"] == 2 and stats["optimized"] == 0


def _streamed(model, inputs, seed: int, draws: bool = False, **kwargs) -> tuple[list, torch.Tensor]:
    """The chunks of `infer_panel_naive(streaming_mode=True)` (tokens as lists; with `draws`, each followed by a draw
    of the consumer's, as `TTS.run`'s `decode_streaming` draws its noise), and the next number the generator gives
    (the same draws -> the same number)."""
    phones, prompts, bert = inputs
    torch.manual_seed(seed)
    chunks = [(None if c is None else (c.dtype, c.tolist()), last, torch.rand(1) if draws else None)
              for c, last in model.infer_panel_naive(phones, None, prompts, bert, streaming_mode=True, **kwargs)]
    return chunks, torch.rand(2)


@settings(max_examples=12, deadline=None)
@given(chunk_length=st.integers(0, 30), stop=st.integers(1, 70), mute=st.booleans(), prompt=st.booleans(),
       top_k=st.sampled_from([1, 3, 15]), draws=st.booleans())
def test_streaming_gives_the_models_own_chunks(chunk_length, stop, mute, prompt, top_k, draws) -> None:
    """api_v2's streaming modes through the static-cache decode (read every CHECK_EVERY steps): the same chunks,
    cut where the model's own streaming decode cuts them (fixed length, or at mute-like tokens), the same last
    chunk at a stop inside a round, and the generator left where the model's own stream leaves it, also when the
    consumer draws between chunks (the steps after a cut inside a round are redone after its draws)."""
    model = build_t2s()
    phones, prompts, bert = _inputs(6, 5, seed=chunk_length)
    inputs = (phones, prompts if prompt else None, bert)
    kwargs = {"chunk_length": chunk_length, "top_k": top_k, "early_stop_num": stop}
    if mute:
        gen = torch.Generator().manual_seed(stop)
        kwargs.update(mute_emb_sim_matrix=torch.rand(model.EOS + 1, generator=gen), chunk_split_thershold=0.5)
    expected = _streamed(model, inputs, 3, draws, **kwargs)
    optimize_t2s(model, **EAGER)
    got = _streamed(model, inputs, 3, draws, **kwargs)
    assert len(got[0]) == len(expected[0]) and torch.equal(got[1], expected[1])
    for (chunk, last, draw), (want, want_last, want_draw) in zip(got[0], expected[0]):
        assert chunk == want and last == want_last and (draw is None or torch.equal(draw, want_draw))
    assert expected[0][-1][1] and not any(last for _, last, _ in expected[0][:-1])
    stats = model.tts_compile.optimization_stats()
    assert stats["optimized"] == 1 and stats["eager"] == 0


def test_a_second_open_stream_and_odd_streaming_arguments_go_to_upstream() -> None:
    model = build_t2s()
    inputs = _inputs(5, 4)
    expected = _streamed(model, inputs, 1, top_k=3, early_stop_num=40, chunk_length=5)
    optimize_t2s(model, **EAGER)
    phones, prompts, bert = inputs
    first = model.infer_panel_naive(phones, None, prompts, bert, streaming_mode=True, top_k=3, early_stop_num=40,
                                    chunk_length=5)
    next(first)  # open: it holds the stream cache
    second = _streamed(model, (phones, prompts, bert), 1, top_k=3, early_stop_num=40, chunk_length=5)
    first.close()
    again = _streamed(model, inputs, 1, top_k=3, early_stop_num=40, chunk_length=5)  # closed: the cache is free
    for chunks, after in (second, again):
        assert chunks == expected[0] and torch.equal(after, expected[1])
    list(model.infer_panel_naive(phones, None, prompts, bert, top_k=3, early_stop_num=20, streaming_mode=True,
                                 chunk_length=2.5))
    stats = model.tts_compile.optimization_stats()
    assert stats["optimized"] == 2 and stats["eager"] == 2 and stats["failure"] is None


def test_a_failing_decode_falls_back_with_the_same_generator(monkeypatch, caplog) -> None:
    model = build_t2s()
    inputs = _inputs(5, 4)
    expected = _both_apis(model, inputs, 2, top_k=3, early_stop_num=9)
    optimize_t2s(model, **EAGER)
    accelerator = model.tts_compile
    original, steps = accelerator._step_body, []

    def fail_late(*args):  # fails mid-decode, after random draws: the generator must be rewound
        steps.append(1)
        if len(steps) > 3:
            raise RuntimeError("boom")
        return original(*args)

    monkeypatch.setattr(accelerator, "_step_body", fail_late)
    with caplog.at_level(logging.WARNING, logger="tts_compile"):
        _assert_same(_both_apis(model, inputs, 2, top_k=3, early_stop_num=9), expected)
    assert accelerator.failure == "infer_panel_naive failed: RuntimeError: boom" and "RuntimeError: boom" in caplog.text
    stats = accelerator.optimization_stats()
    assert stats["fallbacks"] == 1 and stats["eager"] == 2  # the failed naive call, then the batch call


def test_bad_input_raises_upstreams_error_and_keeps_the_accelerator() -> None:
    model = optimize_t2s(build_t2s(), **EAGER)
    phones, prompts, _ = _inputs(5, 4)
    with pytest.raises(RuntimeError):
        model.infer_panel(phones, None, prompts, torch.randn(1, 1024, 7), top_k=1, early_stop_num=3)
    assert model.tts_compile.failure is None


def test_environment_switch_turns_the_accelerator_off(monkeypatch) -> None:
    model = optimize_t2s(build_t2s(), **EAGER)
    monkeypatch.setenv("TTS_COMPILE_DISABLE", "1")
    phones, prompts, bert = _inputs(5, 4)
    model.infer_panel(phones, None, prompts, bert, top_k=1, early_stop_num=3)
    stats = model.tts_compile.optimization_stats()
    assert stats["eager"] == 1 and stats["optimized"] == 0


def test_restore_and_rejection() -> None:
    model = optimize_t2s(build_t2s(), **EAGER)
    restore_t2s(model)
    assert "infer_panel" not in vars(model) and not hasattr(model, "tts_compile")
    with pytest.raises(TypeError, match="model: expected a GPT-SoVITS Text2SemanticDecoder"):
        optimize_t2s(torch.nn.Linear(2, 2))


def _checkpoint(model) -> dict:
    """`model` in upstream's checkpoint layout: config['model'] sizes, every tensor under `model.`."""
    sizes = {"hidden_dim": model.model_dim, "embedding_dim": model.model_dim, "head": model.num_head,
             "n_layer": len(model.h.layers), "vocab_size": model.ar_predict_layer.out_features,
             "phoneme_vocab_size": model.ar_text_embedding.word_embeddings.num_embeddings, "EOS": model.EOS,
             "dropout": 0}
    return {"config": {"model": sizes, "data": {"max_sec": 54}},
            "weight": {f"model.{key}": value.clone() for key, value in model.state_dict().items()}}


def test_optimize_t2s_starts_from_an_upstream_checkpoint(tmp_path) -> None:
    """A `.ckpt` path gives a decoder that decodes as the model it was saved from, and that `.to()` moves in place
    (the accelerator keeps reading its parameters)."""
    model = build_t2s(seed=1)
    path = tmp_path / "s1.ckpt"
    torch.save(_checkpoint(model), path)
    inputs = _inputs(6, 5, 1)
    kwargs = {"top_k": 15, "early_stop_num": 2 * CHECK_EVERY}
    expected = _both_apis(model, inputs, 1, **kwargs)
    loaded = optimize_t2s(path, **EAGER)
    assert isinstance(loaded.tts_compile, T2SAccelerator)
    _assert_same(_both_apis(loaded, inputs, 1, **kwargs), expected)
    loaded.double()
    wide = (inputs[0], inputs[1], inputs[2].double())
    got = _both_apis(loaded, wide, 2, **kwargs)
    reference = _both_apis(restore_t2s(loaded), wide, 2, **kwargs)
    _assert_same(got, reference)


def test_a_bad_checkpoint_is_rejected_with_its_reason() -> None:
    with pytest.raises(ValueError, match="has 'config' and 'weight'"):
        optimize_t2s({"weight": {}})
    incomplete = _checkpoint(build_t2s())
    del incomplete["weight"]["model.ar_predict_layer.weight"]
    with pytest.raises(ValueError, match="lacks 1 of the decoder's tensors, e.g. model.ar_predict_layer.weight"):
        optimize_t2s(incomplete)
    mismatched = _checkpoint(build_t2s())
    mismatched["config"]["model"]["embedding_dim"] = 8
    with pytest.raises(ValueError, match="embedding_dim == hidden_dim"):
        optimize_t2s(mismatched)
