"""`PipelineFrontend.segments`: a request's text to segments as upstream's `preprocess` makes them, every segment's
BERT features from one encoder call (CPU, float32). The preprocessor here has the assembly of upstream's
`get_phones_and_bert` (parts by script, BERT for the Chinese ones, zeros for the others, a short segment retried with
a "." in front) over a character G2P; with `GPT_SOVITS_HOME`, upstream's own assembly methods."""

from __future__ import annotations

import multiprocessing
import os
import re
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.gpt_sovits.test_bert import CHINESE, PADDED, Frontend, pretrained  # noqa: F401 - the fixture
from tts_compile.gpt_sovits.bert import optimize_bert
from tts_compile.gpt_sovits.frontend import PipelineFrontend
from tts_compile.gpt_sovits.upstream import upstream_method

transformers = pytest.importorskip("transformers", reason="the frontend's BERT needs transformers")

FAST = {"compile_mode": "eager", "warmup": "lazy", "verify": True}
OTHER = "abc12"  # not Chinese: zeros, as upstream gives English and digits
WIDTH = 32  # the test BERT's hidden size
CALLS: list[str] = []  # G2P calls made in this process


def g2p(text: str, language: str, version: str) -> tuple[list[int], list[int], str]:
    """A character G2P: two phones a Chinese character, one for anything else; a text with "死" ends its process."""
    if "死" in text and multiprocessing.parent_process() is not None:
        os._exit(1)
    CALLS.append(text)
    word2ph = [2 if c in CHINESE else 1 for c in text]
    return [ord(c) % 97 for c, n in zip(text, word2ph) for _ in range(n)], word2ph, text


class Preprocessor(Frontend):
    """Upstream's `TextPreprocessor` in shape: a BERT, its tokenizer, `get_bert_feature` (test_bert's), and
    `segment_and_extract_feature_for_text` with `get_phones_and_bert`'s assembly."""

    def replace_consecutive_punctuation(self, text: str) -> str:
        return text

    def pre_seg_text(self, text: str, lang: str, method: str) -> list[str]:
        return [piece for piece in re.split("(?<=。)", text) if piece]

    def segment_and_extract_feature_for_text(self, text: str, language: str, version: str):
        return self.get_phones_and_bert(text, language, version)

    def get_phones_and_bert(self, text: str, language: str, version: str, final: bool = False):
        phones, berts = [], []
        for part in re.findall(f"[{OTHER}]+|[^{OTHER}]+", text):
            part_phones, word2ph, norm = g2p(part, language, version)
            chinese = part[0] not in OTHER
            berts.append(self.get_bert_feature(norm, word2ph) if chinese else torch.zeros(WIDTH, len(part_phones)))
            phones += part_phones
        if not final and len(phones) < 6:
            return self.get_phones_and_bert("。" + text, language, version, final=True)
        return phones, torch.cat(berts, 1), text


class G2POnly(Preprocessor):
    """The preprocessor of a G2P worker: no BERT."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")


def pipeline(preprocessor) -> SimpleNamespace:
    return SimpleNamespace(text_preprocessor=preprocessor, configs=SimpleNamespace(version="v2", languages=["zh"]))


def encoder_calls(preprocessor) -> int:
    return preprocessor.tts_compile.optimization_stats()["direct"]  # eager on the CPU: every encoder call is direct


PIECE = st.lists(st.text(alphabet=CHINESE + OTHER, min_size=1, max_size=12), min_size=1, max_size=6)


@settings(max_examples=15, deadline=None)
@given(pieces=PIECE)
def test_segments_equal_upstreams_with_one_bert_call(pretrained, pieces) -> None:  # noqa: F811
    """Any mix of Chinese and other parts, short segments retried: upstream's phones and features, every segment's
    BERT in one encoder call."""
    text = "".join(piece + "。" for piece in pieces)
    plain = Preprocessor(pretrained)
    optimized = optimize_bert(Preprocessor(pretrained), **FAST)
    heard: list[str] = []
    got = PipelineFrontend(pipeline(optimized)).segments(text, "zh", "cut5", lambda part, _: heard.append(part))
    assert heard == ["g2p", "bert"]  # every piece ends in "。", a Chinese part: one BERT call
    expected = [plain.segment_and_extract_feature_for_text(piece, "zh", "v2") for piece in
                plain.pre_seg_text(text, "zh", "cut5")]
    assert len(got) == len(expected)
    for (phones, bert), (want_phones, want_bert, _) in zip(got, expected):
        assert phones.tolist() == want_phones and bert.shape == want_bert.shape and bert.dtype == want_bert.dtype
        assert float((bert - want_bert).abs().max()) <= PADDED * max(float(want_bert.abs().max()), 1.0)
    stats = optimized.tts_compile.optimization_stats()
    assert encoder_calls(optimized) == 1 and stats["optimized"] == stats["calls"] == 1


def test_without_optimize_bert_the_preprocessors_own_method_answers(pretrained) -> None:  # noqa: F811
    plain, reference = Preprocessor(pretrained), Preprocessor(pretrained)
    [(phones, bert)] = PipelineFrontend(pipeline(plain)).segments("今天ab天气。", "zh", "cut5")
    want_phones, want_bert, _ = reference.segment_and_extract_feature_for_text("今天ab天气。", "zh", "v2")
    assert phones.tolist() == want_phones and torch.equal(bert, want_bert)
    assert "get_bert_feature" not in plain.__dict__  # the recorder is gone again


def test_a_preprocessor_that_moves_features_runs_upstreams_way(pretrained) -> None:  # noqa: F811
    """Features placed unlike upstream's (a fork that scales them): that segment is made again, its own way."""
    class Scaling(Preprocessor):
        def segment_and_extract_feature_for_text(self, text, language, version):
            phones, bert, norm = super().segment_and_extract_feature_for_text(text, language, version)
            return phones, 2 * bert, norm

    plain = Scaling(pretrained)
    optimized = optimize_bert(Scaling(pretrained), **FAST)
    [(_, bert)] = PipelineFrontend(pipeline(optimized)).segments("今天天气很好。", "zh", "cut5")
    want = plain.segment_and_extract_feature_for_text("今天天气很好。", "zh", "v2")[1]
    assert float((bert - want).abs().max()) <= PADDED * float(want.abs().max())


def test_g2p_workers_give_the_same_segments_and_survive_a_dead_worker(pretrained) -> None:  # noqa: F811
    """G2P in a worker process (none in this one), the BERT here, in one call: the segments made here; a worker
    that dies answers its segment here, and the pool serves the next text."""
    text = "今天天气很好。好。今天ab天气。"
    here = PipelineFrontend(pipeline(optimize_bert(Preprocessor(pretrained), **FAST))).segments(text, "zh", "cut5")
    optimized = optimize_bert(Preprocessor(pretrained), **FAST)
    frontend = PipelineFrontend(pipeline(optimized), g2p_workers=1, g2p_factory=G2POnly)
    try:
        CALLS.clear()
        apart = frontend.segments(text, "zh", "cut5")
        assert not CALLS and encoder_calls(optimized) == 1
        assert all(torch.equal(a, b) for pair in zip(apart, here, strict=True) for a, b in zip(*pair, strict=True))
        [(phones, _)] = frontend.segments("死了。", "zh", "cut5")
        assert CALLS and phones.tolist() == Preprocessor(pretrained).segment_and_extract_feature_for_text(
            "死了。", "zh", "v2")[0]
        CALLS.clear()
        assert len(frontend.segments("今天天气很好。", "zh", "cut5")) == 1 and not CALLS
    finally:
        frontend.close()


@pytest.mark.upstream
@pytest.mark.skipif(not os.environ.get("GPT_SOVITS_HOME"), reason="needs GPT_SOVITS_HOME (upstream's checkout)")
def test_upstreams_own_assembly(pretrained) -> None:  # noqa: F811
    """Upstream's `get_phones_and_bert`, `clean_text_inf` and `get_bert_inf`, read from its checkout, over the
    character G2P and a language split by script: its features, with one encoder call for the whole text."""
    class Segmenter:
        @staticmethod
        def getTexts(text, default=None):  # noqa: N802 - upstream's name
            return [{"lang": "en" if part[0] in OTHER else "zh", "text": part}
                    for part in re.findall(f"[{OTHER}]+|[^{OTHER}]+", text)]

    names = {"re": re, "torch": torch, "LangSegmenter": Segmenter, "clean_text": g2p,
             "cleaned_text_to_sequence": lambda phones, version: phones}
    methods = {name: upstream_method("TTS_infer_pack/TextPreprocessor.py", "TextPreprocessor", name, **names)
               for name in ("get_phones_and_bert", "clean_text_inf", "get_bert_inf")}

    class Upstream(Preprocessor):
        get_phones_and_bert, clean_text_inf, get_bert_inf = (methods[name] for name in (
            "get_phones_and_bert", "clean_text_inf", "get_bert_inf"))

        def __init__(self, folder) -> None:
            super().__init__(folder)
            import threading
            self.bert_lock = threading.RLock()

    text = "今天天气很好。好。今天天气很好我们。"  # Chinese only: upstream's zeros are 1024 wide, this BERT 32
    plain, optimized = Upstream(pretrained), optimize_bert(Upstream(pretrained), **FAST)
    got = PipelineFrontend(pipeline(optimized)).segments(text, "zh", "cut5")
    for (phones, bert), piece in zip(got, plain.pre_seg_text(text, "zh", "cut5"), strict=True):
        want_phones, want_bert, _ = plain.segment_and_extract_feature_for_text(piece, "zh", "v2")
        assert phones.tolist() == want_phones and bert.shape == want_bert.shape
        assert float((bert - want_bert).abs().max()) <= PADDED * float(want_bert.abs().max())
    assert encoder_calls(optimized) == 1
