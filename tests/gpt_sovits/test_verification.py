"""Every GPT-SoVITS stage checks itself against upstream's method before it serves (stand-ins, CPU, float32): a fork
whose layers the optimized path does not compute, or a corrupted optimized result, is caught on first use and the
call returns the fork's own output; weights changed in every way reach the next call; a request past the largest
bucket is served by upstream and the next one is accelerated again."""

from __future__ import annotations

import copy

import pytest
import torch

from tts_compile.core.buckets import Ladder
from tts_compile.core.verify import without_tf32
from tts_compile.gpt_sovits import optimize_cfm, optimize_sovits, optimize_t2s
from tts_compile.gpt_sovits import sovits as sovits_module
from tts_compile.gpt_sovits import t2s as t2s_module
from tts_compile.gpt_sovits.models.dit import build_flow_matching
from tts_compile.gpt_sovits.models.t2s import build_t2s
from tts_compile.gpt_sovits.models.vits import build_vits

from .test_cfm import _inputs as cfm_inputs
from .test_cfm import _seeded as cfm_seeded
from .test_sovits import PADDED, _request, _seeded
from .test_t2s import _assert_same, _both_apis, _inputs

CHECKED = {"compile_mode": "eager", "verify": True}
# on a GPU the same checks run natively, the stages' buckets captured as CUDA graphs
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _float32_means_float32():
    """On CUDA float32 convolutions and matmuls may run in TF32 (a 10-bit mantissa): the fp32 checks would measure
    that, not the optimization."""
    with without_tf32():
        yield


def _scale(factor: float):
    """A forward hook scaling a module's output (the first item of a tuple output)."""
    def hook(module, inputs, output):
        return (output[0] * factor, *output[1:]) if isinstance(output, tuple) else output * factor
    return hook


def _counts(handle) -> tuple[int, int, str | None]:
    stats = handle.optimization_stats()
    return stats["rejected"], stats["uncovered"], stats["failure"]


# ------------------------------------------------------------------------------------------------ T2S
def test_t2s_a_hooked_layer_is_caught_by_the_probe() -> None:
    model = build_t2s()
    model.h.layers[0].register_forward_hook(_scale(1.1))  # upstream runs it; the static-cache step does not
    inputs = _inputs(5, 4)
    expected = _both_apis(model, inputs, 1, top_k=3, early_stop_num=20)
    optimize_t2s(model, **CHECKED)
    _assert_same(_both_apis(model, inputs, 1, top_k=3, early_stop_num=20), expected)
    rejected, uncovered, failure = _counts(model.tts_compile)
    assert rejected == 1 and uncovered == 2 and failure is None and model.tts_compile.active


def test_t2s_a_corrupted_step_is_caught_by_the_probe(monkeypatch) -> None:
    model = build_t2s()
    inputs = _inputs(5, 4)
    expected = _both_apis(model, inputs, 1, top_k=3, early_stop_num=20)
    optimize_t2s(model, **CHECKED)
    accelerator, original = model.tts_compile, model.tts_compile._step_body

    def corrupted(state, *args):
        original(state, *args)
        state.logits.add_(1e-2)

    monkeypatch.setattr(accelerator, "_step_body", corrupted)
    _assert_same(_both_apis(model, inputs, 1, top_k=3, early_stop_num=20), expected)
    assert _counts(accelerator)[:2] == (1, 2) and accelerator.failure is None


def test_t2s_a_request_past_the_largest_capacity_is_upstreams_and_the_next_is_accelerated(monkeypatch) -> None:
    monkeypatch.setattr(t2s_module, "CAPACITIES", Ladder((64,)))
    model = build_t2s()
    inputs = _inputs(5, 4)
    long, short = {"top_k": 3, "early_stop_num": 80}, {"top_k": 3, "early_stop_num": 20}
    expected = [_both_apis(model, inputs, 1, **long), _both_apis(model, inputs, 1, **short)]
    optimize_t2s(model, **CHECKED)
    _assert_same(_both_apis(model, inputs, 1, **long), expected[0])  # 5 + 4 + 81 positions > 64
    stats = model.tts_compile.optimization_stats()
    assert stats["uncovered"] == 2 and stats["optimized"] == 0 and stats["failure"] is None
    _assert_same(_both_apis(model, inputs, 1, **short), expected[1])
    assert model.tts_compile.optimization_stats()["optimized"] == 2


# ------------------------------------------------------------------------------------------------ SoVITS
@pytest.mark.parametrize("fault", ["hooked block", "corrupted result"])
def test_sovits_a_fault_is_caught_on_first_use(monkeypatch, fault) -> None:
    model = build_vits(seed=1)
    if fault == "hooked block":  # the padded decoder runs the block's convolutions, not the block
        model.dec.resblocks[0].register_forward_hook(_scale(1.5))
    else:
        synthesize = sovits_module._synthesize
        monkeypatch.setattr(sovits_module, "_synthesize", lambda *a: synthesize(*a) + 1e-2)
    reference = copy.deepcopy(model)
    optimize_sovits(model, **CHECKED)
    kwargs = _request("v2", 15, 7, None)
    for _ in range(2):  # the first call finds the fault, the second is served by upstream at once
        got, after = _seeded(model.decode, **kwargs)
        expected, expected_after = _seeded(reference.decode, **kwargs)
        assert torch.equal(got, expected) and torch.equal(after, expected_after)
    rejected, uncovered, failure = _counts(model.tts_compile)
    assert rejected >= 1 and uncovered == 2 and failure is None and model.tts_compile.active


# ------------------------------------------------------------------------------------------------ CFM
@pytest.mark.parametrize("fault", ["hooked estimator", "corrupted result"])
def test_cfm_a_fault_is_caught_on_first_use(monkeypatch, fault) -> None:
    cfm = build_flow_matching()
    if fault == "hooked estimator":  # upstream calls the estimator; the loop runs its blocks
        cfm.estimator.register_forward_hook(_scale(1.1))
    reference = copy.deepcopy(cfm)
    optimize_cfm(cfm, **CHECKED)
    if fault == "corrupted result":
        velocity = cfm.tts_compile._velocity
        monkeypatch.setattr(cfm.tts_compile, "_velocity", lambda *a: velocity(*a) + 1e-2)
    args = (*cfm_inputs(1, 16, 4), 3)
    for _ in range(2):
        assert torch.equal(cfm_seeded(cfm.inference, *args), cfm_seeded(reference.inference, *args))
    rejected, uncovered, failure = _counts(cfm.tts_compile)
    assert rejected == 1 and uncovered == 2 and failure is None


# ------------------------------------------------------------------------------------------------ weights
def _replace(model, new, how: str) -> None:
    if how == "param.data":
        for p, q in zip(model.parameters(), new.parameters()):
            p.data = q.data.clone()
    elif how == "assign":
        model.load_state_dict(new.state_dict(), assign=True)
    else:
        with torch.inference_mode():  # in place, into inference tensors when the model was built as such
            model.load_state_dict(new.state_dict())


def _built(build, inference: bool, device: str, **kwargs):
    if inference:
        with torch.inference_mode():
            return build(**kwargs).to(device)
    return build(**kwargs).to(device)


def _on(device: str, tensors):
    return type(tensors)(t.to(device) if isinstance(t, torch.Tensor) else t for t in tensors)


def _mode(device: str) -> dict:
    return {**CHECKED, "compile_mode": "cudagraphs" if device == "cuda" else "eager"}


HOW = [("param.data", False), ("assign", False), ("in place", False), ("in place", True)]
CAPTURED = 1e-5  # fp32 on CUDA: the captured step's Triton layers round unlike the reference's torch ops


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("how,inference", HOW)
def test_t2s_follows_every_weight_change(how, inference, device) -> None:
    model = _built(build_t2s, inference, device, seed=0)
    optimize_t2s(model, **_mode(device))
    inputs = _on(device, _inputs(5, 4))
    _both_apis(model, inputs, 1, top_k=3, early_stop_num=20)
    new = build_t2s(seed=1).to(device)
    _replace(model, new, how)
    _assert_same(_both_apis(model, inputs, 1, top_k=3, early_stop_num=20),
                 _both_apis(new, inputs, 1, top_k=3, early_stop_num=20))
    assert model.tts_compile.optimization_stats()["optimized"] == 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("how,inference", HOW)
def test_sovits_follows_every_weight_change(how, inference, device) -> None:
    model = _built(build_vits, inference, device, seed=1)
    optimize_sovits(model, **_mode(device), channels_last="on")  # the padded decoder keeps channels-last copies
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in _request("v2", 15, 7, None).items()}
    _seeded(model.decode, **kwargs)
    new = build_vits(seed=2).to(device)
    _replace(model, new, how)
    got, expected = _seeded(model.decode, **kwargs)[0], _seeded(new.decode, **kwargs)[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=PADDED if device == "cpu" else CAPTURED)
    stats = model.tts_compile.optimization_stats()
    assert stats["optimized"] == 2 and stats["failure"] is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("how,inference", HOW)
def test_cfm_follows_every_weight_change(how, inference, device) -> None:
    cfm = _built(build_flow_matching, inference, device, seed=0)
    optimize_cfm(cfm, **_mode(device))
    args = (*_on(device, cfm_inputs(1, 16, 4)), 3)
    for _ in range(2):  # the second call captures the bucket on CUDA
        cfm_seeded(cfm.inference, *args)
    new = build_flow_matching(seed=1).to(device)
    _replace(cfm, new, how)
    torch.testing.assert_close(cfm_seeded(cfm.inference, *args), cfm_seeded(new.inference, *args), rtol=0,
                               atol=0 if device == "cpu" else CAPTURED)
    assert cfm.tts_compile.optimization_stats()["optimized"] == 3


def test_eight_threads_a_weight_swap_and_a_discard_mid_run() -> None:
    """Eight threads meet new SoVITS buckets at once, each call drawing noise from the shared generator, while the
    weights are swapped (by assignment: every graph dropped) and the graphs discarded mid-run: every bucket verifies
    (no other stage call draws between a verification's two runs), every call seeded under `DRAWS` equals upstream's
    module with the weights in force, and the stage stays on."""
    import threading

    from tts_compile.core.rng import DRAWS

    model = build_vits(seed=1)
    reference = copy.deepcopy(model)
    optimize_sovits(model, **CHECKED)
    new = build_vits(seed=2)
    requests = [_request("v2", tokens, phones, None, seed=tokens) for tokens, phones in
                ((10, 5), (40, 20), (90, 40), (170, 70), (10, 30), (40, 70))]
    failures, halfway = [], threading.Barrier(9)

    def work(index: int) -> None:
        for j in range(4):
            if j == 2:
                halfway.wait()
            kwargs = requests[(index + j) % len(requests)]
            with torch.inference_mode():
                model.decode(**kwargs)
                with DRAWS:
                    torch.manual_seed(index)
                    got = model.decode(**kwargs)
                    torch.manual_seed(index)
                    want = reference.decode(**kwargs)
            if not torch.allclose(got, want, rtol=0, atol=PADDED):
                failures.append((index, j, float((got - want).abs().max())))

    def swap() -> None:
        halfway.wait()
        with DRAWS:  # the pairs compared above see one set of weights
            model.load_state_dict(new.state_dict(), assign=True)
            reference.load_state_dict(new.state_dict(), assign=True)
        model.tts_compile.runner.discard(lambda key: True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)] + [threading.Thread(target=swap)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    stats = model.tts_compile.optimization_stats()
    assert stats["rejected"] == 0 and stats["rebuilds"] == 1 and stats["failure"] is None
    assert stats["optimized"] == stats["calls"] == 64
    assert not failures
