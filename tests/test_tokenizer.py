import io

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf

from keras_transformer.data.corpus import load_bundled_corpus
from keras_transformer.data.tokenizer import (
    END_ID,
    PAD_ID,
    START_ID,
    UNK_ID,
    SubwordTokenizer,
)

PLACEHOLDER_LINES = [
    "Could not open %s: %d errors",
    "Deleted %1 of %2 files",
    "Hello {0}, you have {1} messages",
    "%(count)d items in %(name)s",
    "100%% done <b>%1</b>",
]
HANGUL = "어제 카페 갔었어 거기 사람 많더라"


@pytest.fixture(scope="module")
def corpora():
    return load_bundled_corpus("train"), load_bundled_corpus("dev")


@pytest.fixture(scope="module")
def tokenizers(corpora):
    train, _ = corpora
    sample = train.sample(50_000, seed=0)
    ko = SubwordTokenizer.train(sample.sources, vocab_size=8000, seed=0)
    en = SubwordTokenizer.train(sample.targets, vocab_size=8000, seed=0)
    return ko, en


def _round_trip(tokenizer, texts):
    out = tokenizer.detokenize(tokenizer.tokenize(texts)).numpy()
    return [o.decode("utf-8") for o in out]


@pytest.mark.parametrize("side", ["ko", "en"])
def test_dev_round_trip(tokenizers, corpora, side):
    tokenizer = tokenizers[0] if side == "ko" else tokenizers[1]
    dev = corpora[1]
    texts = dev.sources if side == "ko" else dev.targets
    back = _round_trip(tokenizer, texts)
    rate = np.mean([a == b for a, b in zip(back, texts)])
    assert rate >= 0.99, f"{side}: only {rate:.2%} of dev lines round-trip"
    assert tokenizer.vocab_size == 8000
    assert tokenizer.training_seconds is not None and tokenizer.num_training_sentences == 50_000


def test_special_ids(tokenizers):
    ko, _ = tokenizers
    assert (PAD_ID, UNK_ID, START_ID, END_ID) == (0, 1, 2, 3)
    assert ko.id_to_piece[:4] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert len(ko.id_to_piece) == ko.vocab_size
    ids = ko.tokenize(["파일 열기", "취소"])
    assert isinstance(ids, tf.RaggedTensor) and ids.dtype == tf.int32
    flat = ids.flat_values.numpy()
    assert not np.isin(flat, [PAD_ID, START_ID, END_ID]).any()


def test_placeholders_survive(tokenizers):
    for tokenizer in tokenizers:
        assert _round_trip(tokenizer, PLACEHOLDER_LINES) == PLACEHOLDER_LINES
        for symbol in ["%s", "%d", "%1", "{0}", "%("]:
            ids = tokenizer.encode(f"a {symbol}")
            assert tokenizer.piece_to_id(symbol) in ids, symbol


def test_hangul_round_trip(tokenizers):
    ko, en = tokenizers
    assert _round_trip(ko, [HANGUL]) == [HANGUL]
    assert ko.decode(ko.encode(HANGUL)) == HANGUL
    # Byte fallback: even the English tokenizer spells Korean exactly (no <unk>).
    assert _round_trip(en, [HANGUL]) == [HANGUL]
    assert UNK_ID not in en.encode(HANGUL)


def test_python_and_graph_agree(tokenizers, corpora):
    ko, en = tokenizers
    dev = corpora[1]
    assert ko.tokenize(dev.sources[:50]).to_list() == [ko.encode(t) for t in dev.sources[:50]]
    assert en.tokenize(dev.targets[:50]).to_list() == [en.encode(t) for t in dev.targets[:50]]
    single = ko.tokenize("파일 열기")
    assert isinstance(single, tf.Tensor) and single.shape.rank == 1
    assert ko.detokenize(single).numpy().decode() == "파일 열기"
    assert ko.tokenize(tf.constant(["파일 열기"])).to_list() == [single.numpy().tolist()]
    assert ko.tokenize([]).shape[0] == 0


def test_detokenize_ignores_specials_and_works_in_graph(tokenizers):
    _, en = tokenizers
    texts = ["Open file", "Save %s as {0}"]
    ids = en.tokenize(texts)
    start = tf.fill([2, 1], START_ID)
    end = tf.fill([2, 1], END_ID)
    padded = tf.concat([start, ids, end], axis=1).to_tensor(default_value=PAD_ID, shape=[2, 20])
    assert [t.decode() for t in en.detokenize(padded).numpy()] == texts
    # everything after the first END is dropped
    garbage = tf.concat([padded[:, :-1], tf.fill([2, 1], en.piece_to_id("▁file"))], axis=1)
    assert [t.decode() for t in en.detokenize(garbage).numpy()] == texts
    assert en.decode([START_ID, *en.encode("Open file"), END_ID, 7, PAD_ID]) == "Open file"

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def round_trip(x):
        return en.detokenize(en.tokenize(x).to_tensor())

    assert [t.decode() for t in round_trip(tf.constant(texts)).numpy()] == texts


def test_save_load(tokenizers, corpora, tmp_path):
    ko, _ = tokenizers
    path = ko.save(tmp_path, "ko")
    assert path == tmp_path / "ko.model" and path.read_bytes() == ko.model_proto
    vocab = (tmp_path / "ko.vocab").read_text(encoding="utf-8").splitlines()
    assert vocab == ko.id_to_piece
    texts = corpora[1].sources[:200] + [HANGUL]
    for loaded in (SubwordTokenizer.load(path), SubwordTokenizer.load(tmp_path / "ko"),
                   SubwordTokenizer.from_proto(ko.model_proto)):
        assert loaded.tokenize(texts).to_list() == ko.tokenize(texts).to_list()
        assert loaded.vocab_size == ko.vocab_size
    with pytest.raises(FileNotFoundError):
        SubwordTokenizer.load(tmp_path / "missing.model")


def test_training_is_deterministic(corpora):
    texts = corpora[1].targets
    a = SubwordTokenizer.train(texts, vocab_size=600, seed=1, hard_vocab_limit=False)
    b = SubwordTokenizer.train(texts, vocab_size=600, seed=1, hard_vocab_limit=False)
    assert a.model_proto == b.model_proto
    c = SubwordTokenizer.train(texts, vocab_size=600, seed=1, max_sentences=500, hard_vocab_limit=False)
    d = SubwordTokenizer.train(texts, vocab_size=600, seed=1, max_sentences=500, hard_vocab_limit=False)
    assert c.model_proto == d.model_proto and c.num_training_sentences == 500


def test_rejects_models_with_other_special_ids(corpora):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpora[1].targets), model_writer=model, vocab_size=300,
        minloglevel=2,  # default ids: unk=0, bos=1, eos=2, no pad
    )
    with pytest.raises(ValueError, match="special ids"):
        SubwordTokenizer.from_proto(model.getvalue())
    with pytest.raises(ValueError, match="no text"):
        SubwordTokenizer.train(["", "  "], vocab_size=100)


def test_survives_seed_reset_and_saved_model(tokenizers, tmp_path):
    # tf.random.set_seed / keras.utils.set_random_seed clear TF's kernel cache, which
    # destroys tf_text's default kernel-owned SentencePiece resource.
    ko, _ = tokenizers
    expected = ko.tokenize([HANGUL, "%s 저장"]).to_list()
    tf.random.set_seed(7)
    assert ko.tokenize([HANGUL, "%s 저장"]).to_list() == expected

    module = tf.Module()
    module.tokenizer = ko
    module.tokenize = tf.function(
        lambda texts: ko.tokenize(texts).to_tensor(),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    module.detokenize = tf.function(
        ko.detokenize, input_signature=[tf.TensorSpec([None, None], tf.int32)]
    )
    tf.saved_model.save(module, str(tmp_path / "tokenizer_module"))
    restored = tf.saved_model.load(str(tmp_path / "tokenizer_module"))
    ids = restored.tokenize(tf.constant([HANGUL, "%s 저장"]))
    tf.random.set_seed(8)
    assert [t.decode() for t in restored.detokenize(ids).numpy()] == [HANGUL, "%s 저장"]
