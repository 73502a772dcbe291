"""TextPipeline with a small real tokenizer built here (no MiniLM needed)."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from edge_agent.errors import InvalidInput, InvalidText, ModelLoadError, SequenceTooLong
from edge_agent.runtime.model_spec import TextSpec
from edge_agent.runtime.text import TextPipeline

WORDS = "the cat sat on mat a dog ran far away".split()


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("textmodel")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    # Fixed padding as shipped files often have: the pipeline must override it.
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=32)
    tok.save(str(d / "tokenizer.json"))
    return d


def texts(*s):
    return np.array([[x.encode() if isinstance(x, str) else x] for x in s], dtype=object)


def test_prepare_pads_to_longest_in_request(version_dir):
    p = TextPipeline(TextSpec(max_length=16), version_dir)
    f = p.prepare(texts("the cat", "a dog ran far away"))
    assert f["input_ids"].dtype == np.int64 and f["input_ids"].shape == (2, 7)
    assert f["input_ids"][0].tolist() == [2, 4, 5, 3, 0, 0, 0]
    assert f["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert f["attention_mask"][1].sum() == 7
    assert f["token_type_ids"].sum() == 0


def test_only_graph_inputs_plus_mask(version_dir):
    p = TextPipeline(TextSpec(), version_dir, graph_inputs=["input_ids"])
    f = p.prepare(texts("the cat"))
    assert set(f) == {"input_ids", "attention_mask"}
    assert set(p.graph_feeds(f)) == {"input_ids"}
    with pytest.raises(ModelLoadError):
        TextPipeline(TextSpec(), version_dir, graph_inputs=["pixels"])


def test_overlong_text_truncated_keeping_sep(version_dir):
    p = TextPipeline(TextSpec(max_length=5, on_overflow="truncate"), version_dir)
    f = p.prepare(texts("the cat sat on the mat", "dog"))
    assert f["input_ids"].shape == (2, 5)
    assert f["input_ids"][0].tolist() == [2, 4, 5, 6, 3]


def test_overlong_text_refused_when_spec_says_error(version_dir):
    p = TextPipeline(TextSpec(max_length=5, on_overflow="error"), version_dir)
    assert p.prepare(texts("the cat sat"))["input_ids"].shape == (1, 5)  # exactly max_length is fine
    with pytest.raises(SequenceTooLong) as ei:
        p.prepare(texts("dog", "the cat sat on the mat"))
    assert ei.value.code == "sequence_too_long"
    assert ei.value.details == {"tokens": 8, "max_length": 5}
    assert "row 1" in ei.value.message


def test_invalid_utf8_is_coded(version_dir):
    p = TextPipeline(TextSpec(), version_dir)
    with pytest.raises(InvalidText) as ei:
        p.prepare(texts("the cat", b"ok \xff\xfe bad"))
    assert ei.value.code == "invalid_utf8"
    assert ei.value.details == {"row": 1, "byte": 3}
    with pytest.raises(InvalidText):
        p.prepare(texts(b"\xed\xa0\x80"))  # encoded surrogate: strict UTF-8 refuses it


def test_shape_must_be_one_text_per_row(version_dir):
    p = TextPipeline(TextSpec(), version_dir)
    with pytest.raises(InvalidInput):
        p.prepare(np.array([[b"a", b"b"]], dtype=object))
    with pytest.raises(InvalidInput):
        p.prepare(np.array([[3]], dtype=object))


def test_pad_and_concat_keeps_pooling_per_row(version_dir):
    p = TextPipeline(TextSpec(), version_dir)
    a, b = p.prepare(texts("the cat")), p.prepare(texts("a dog ran far away", "on"))
    merged = p.pad_and_concat([a, b])
    assert merged["input_ids"].shape == (3, 7)
    assert merged["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0]
    # Fake token states: padded positions hold garbage that must not leak in.
    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, 7, 6)).astype(np.float32)
    pooled = p.pool({"last_hidden_state": h}, merged)
    m = merged["attention_mask"][0].astype(bool)
    want = h[0][m].mean(0)
    want /= np.linalg.norm(want)
    np.testing.assert_allclose(pooled[0], want, atol=1e-6)
    assert pooled.dtype == np.float32 and pooled.shape == (3, 6)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-6)
    parts = TextPipeline.split_rows(pooled, [1, 2])
    assert [x.shape[0] for x in parts] == [1, 2]


def test_cls_pooling_without_normalising(version_dir):
    p = TextPipeline(TextSpec(pooling="cls", normalize=False), version_dir)
    f = p.prepare(texts("the cat"))
    h = np.arange(4 * 3, dtype=np.float32).reshape(1, 4, 3)
    np.testing.assert_array_equal(p.pool({"last_hidden_state": h}, f), h[:, 0])
