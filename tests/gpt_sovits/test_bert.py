"""optimize_bert on a small random-weight BERT saved as a local pretrained directory (no hub) and loaded as upstream
loads its Chinese BERT (`AutoTokenizer`, `AutoModelForMaskedLM`), CPU, float32: the padded, masked encoder gives the
features of `get_bert_feature` for mixed Chinese / English / digit text, or hands the call to it; with
`GPT_SOVITS_HOME`, upstream's own `TextPreprocessor.get_bert_feature`."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.gpt_sovits.bert import LADDER, ROWS, optimize_bert, restore_bert
from tts_compile.gpt_sovits.upstream import upstream_method

transformers = pytest.importorskip("transformers", reason="the BERT stage's tests need transformers")

FAST = {"compile_mode": "eager", "warmup": "lazy", "verify": True}
PADDED = 1e-5  # fp32, relative to the peak: padded + masked vs exact length on CPU; measured below 1e-6
CHINESE = "今天天气很好我们去公园吧你好欢迎使用一二三四五六七八九十"
ALPHABET = CHINESE + "0123456789abcdefxyz"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 4-layer BERT of random weights and its vocabulary (special tokens, the characters, their ## pieces)."""
    folder = tmp_path_factory.mktemp("bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(ALPHABET),
             *(f"##{c}" for c in dict.fromkeys(ALPHABET))]
    transformers.BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4,
                                     num_attention_heads=4, intermediate_size=64)
    transformers.BertForMaskedLM(config).eval().save_pretrained(folder)
    return folder


class Frontend:
    """The stand-in of upstream's TextPreprocessor for this stage: its BERT, tokenizer and `get_bert_feature` (the
    third-to-last hidden state between [CLS] and [SEP], token i repeated word2ph[i] times, as (width, phones))."""

    def __init__(self, folder) -> None:
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self.bert_model = transformers.AutoModelForMaskedLM.from_pretrained(folder).eval()
        self.device = torch.device("cpu")

    def get_bert_feature(self, text: str, word2ph: list) -> torch.Tensor:
        with torch.no_grad():
            inputs = self.tokenizer(text, return_tensors="pt")
            hidden = self.bert_model(**inputs, output_hidden_states=True)["hidden_states"][-3][0].cpu()[1:-1]
        assert len(word2ph) == len(text)
        return torch.cat([hidden[i].repeat(word2ph[i], 1) for i in range(len(word2ph))], 0).T


@settings(max_examples=20, deadline=None)
@given(text=st.text(alphabet=ALPHABET, min_size=1, max_size=60), data=st.data())
def test_features_equal_get_bert_features(pretrained, text, data) -> None:
    frontend, plain = optimize_bert(Frontend(pretrained), **FAST), Frontend(pretrained)
    word2ph = data.draw(st.lists(st.integers(0, 3), min_size=len(text), max_size=len(text)))
    if not sum(word2ph):
        word2ph[0] = 1
    try:
        expected = plain.get_bert_feature(text, word2ph)
    except IndexError:  # fewer tokens than characters ("00" is one word piece): upstream's own error, both ways
        with pytest.raises(IndexError):
            frontend.get_bert_feature(text, word2ph)
        assert frontend.tts_compile.optimization_stats()["uncovered"] == 1 and frontend.tts_compile.active
        return
    got = frontend.get_bert_feature(text, word2ph)
    assert got.shape == expected.shape == (32, sum(word2ph)) and got.dtype == expected.dtype
    assert float((got - expected).abs().max()) <= PADDED * float(expected.abs().max())
    stats = frontend.tts_compile.optimization_stats()
    assert stats["optimized"] == 1 and stats["verifications"] == 1 and stats["rejected"] == 0


def test_one_graph_serves_every_length_of_its_bucket(pretrained) -> None:
    frontend = optimize_bert(Frontend(pretrained), **FAST)
    for n in range(1, 13):  # 3..14 tokens: all in the first bucket
        frontend.get_bert_feature(CHINESE[:n], [2] * n)
    stats = frontend.tts_compile.optimization_stats()
    assert LADDER.fit(14) == LADDER.sizes[0] and stats["verifications"] == 1 and stats["optimized"] == 12


@settings(max_examples=10, deadline=None)
@given(texts=st.lists(st.text(alphabet=CHINESE, min_size=1, max_size=40), min_size=1, max_size=ROWS.largest + 3),
       data=st.data())
def test_several_texts_in_one_call_equal_each_alone(pretrained, texts, data) -> None:
    """`features`: one request's segments in one encoder call (rows padded to a power of two, each its own text),
    each equal to upstream's `get_bert_feature` of that text alone; past `ROWS.largest` texts, several calls."""
    frontend, plain = optimize_bert(Frontend(pretrained), **FAST), Frontend(pretrained)
    items = [(text, data.draw(st.lists(st.integers(1, 3), min_size=len(text), max_size=len(text))))
             for text in texts]
    got = frontend.tts_compile.features(items)
    assert len(got) == len(items)
    for feature, (text, word2ph) in zip(got, items):
        expected = plain.get_bert_feature(text, word2ph)
        assert feature.shape == expected.shape == (32, sum(word2ph))
        assert float((feature - expected).abs().max()) <= PADDED * float(expected.abs().max())
    stats = frontend.tts_compile.optimization_stats()
    assert stats["calls"] == stats["optimized"] == stats["verifications"] == 1 and stats["rejected"] == 0
    assert stats["direct"] == -(-len(items) // ROWS.largest)  # encoder calls (eager on the CPU: no graphs)


def test_one_text_not_covered_sends_the_whole_call_to_upstream(pretrained) -> None:
    frontend = optimize_bert(Frontend(pretrained), **FAST)
    with pytest.raises(AssertionError):  # upstream's own check that word2ph has a count per character
        frontend.tts_compile.features([("今天", [1, 1]), ("天气", [1])])
    assert frontend.tts_compile.optimization_stats()["uncovered"] == 1


@pytest.mark.parametrize("text, word2ph", [
    ("今天", [1]),  # a count per character is upstream's assertion
    ("今天", "x"),
    ("天" * 600, [1] * 600),  # past BERT's 512 positions
])
def test_calls_it_does_not_cover_get_upstreams_own_error(pretrained, text, word2ph) -> None:
    with pytest.raises(Exception) as upstream:
        Frontend(pretrained).get_bert_feature(text, word2ph)
    frontend = optimize_bert(Frontend(pretrained), **FAST)
    with pytest.raises(upstream.type):
        frontend.get_bert_feature(text, word2ph)
    stats = frontend.tts_compile.optimization_stats()
    assert stats["uncovered"] == 1 and frontend.tts_compile.failure is None


def test_restore_gives_upstreams_method_back(pretrained) -> None:
    frontend = optimize_bert(Frontend(pretrained), **FAST)
    restore_bert(frontend)
    assert frontend.get_bert_feature.__func__ is Frontend.get_bert_feature and not hasattr(frontend, "tts_compile")


def test_optimize_bert_names_what_an_object_lacks() -> None:
    with pytest.raises(TypeError, match="text_preprocessor: expected a GPT-SoVITS TextPreprocessor .* lacks "
                                        "bert_model, tokenizer"):
        optimize_bert(object())


@pytest.mark.upstream
@pytest.mark.skipif(not os.environ.get("GPT_SOVITS_HOME"), reason="needs GPT_SOVITS_HOME (upstream's checkout)")
def test_features_equal_upstreams_own_get_bert_feature(pretrained) -> None:
    """Upstream's `TextPreprocessor.get_bert_feature`, read from its checkout's source (the module itself imports
    the whole G2P stack and torchaudio), as the stand-in's method: optimized and as it is."""
    method = upstream_method("TTS_infer_pack/TextPreprocessor.py", "TextPreprocessor", "get_bert_feature",
                             torch=torch)

    class Upstream(Frontend):
        get_bert_feature = method

    frontend, plain = optimize_bert(Upstream(pretrained), **FAST), Upstream(pretrained)
    text = "今天天气很好abc123我们去公园吧"
    word2ph = [2 if c in CHINESE else 1 for c in text]
    got, expected = frontend.get_bert_feature(text, word2ph), plain.get_bert_feature(text, word2ph)
    assert got.shape == expected.shape == (32, sum(word2ph))
    assert float((got - expected).abs().max()) <= PADDED * float(expected.abs().max())
    assert frontend.tts_compile.optimization_stats()["optimized"] == 1


def test_optimize_pipeline_captures_the_frontends_bert(pretrained) -> None:
    """`optimize_pipeline` attaches the stage to `tts.text_preprocessor` (every version), `bert=False` leaves it."""
    from tests.gpt_sovits.test_pipeline import FakeTTS
    from tts_compile.gpt_sovits import optimize_pipeline

    tts = FakeTTS("v2")
    tts.text_preprocessor = Frontend(pretrained)
    handle = optimize_pipeline(tts, **FAST)
    assert "text_preprocessor" in handle.stages and tts.text_preprocessor.get_bert_feature("你好", [1, 2]).shape == (
        32, 3)
    assert "text_preprocessor" not in optimize_pipeline(tts, bert=False, **FAST).stages
    assert not hasattr(tts.text_preprocessor, "tts_compile")
