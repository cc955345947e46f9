import numpy as np
import pytest
import tensorflow as tf

from keras_transformer.data.corpus import load_bundled_corpus
from keras_transformer.data.pipeline import (
    PipelineStats,
    default_bucket_boundaries,
    make_dataset,
    padding_share,
)
from keras_transformer.data.tokenizer import END_ID, PAD_ID, START_ID, SubwordTokenizer

MAX_LENGTH = 24


@pytest.fixture(scope="module")
def setup():
    dev = load_bundled_corpus("dev")  # ko-en: Korean sources, English targets
    head = dev.head(400)
    source_tokenizer = SubwordTokenizer.train(
        head.sources, vocab_size=500, byte_fallback=False, character_coverage=0.995,
        hard_vocab_limit=False,
    )
    target_tokenizer = SubwordTokenizer.train(head.targets, vocab_size=500, hard_vocab_limit=False)
    return dev, source_tokenizer, target_tokenizer


def batches(dataset):
    return [(inputs["encoder_inputs"], inputs["decoder_inputs"], labels)
            for inputs, labels in dataset.as_numpy_iterator()]


def real_length(row):
    nonzero = np.flatnonzero(row != PAD_ID)
    return int(nonzero[-1]) + 1 if len(nonzero) else 0


def test_default_bucket_boundaries():
    assert default_bucket_boundaries(64) == [4, 6, 8, 12, 16, 24, 32, 48, 64]
    assert default_bucket_boundaries(40) == [4, 6, 8, 12, 16, 24, 32, 40]
    assert default_bucket_boundaries(100)[-2:] == [96, 100]


def test_shapes_shift_and_filtering(setup):
    dev, src_tok, tgt_tok = setup
    dataset, stats = make_dataset(
        dev.sources, dev.targets, src_tok, tgt_tok, max_length=MAX_LENGTH, batch_size=16, seed=1
    )
    assert isinstance(stats, PipelineStats)
    spec_inputs, spec_labels = dataset.element_spec
    assert set(spec_inputs) == {"encoder_inputs", "decoder_inputs"}
    for spec in (spec_inputs["encoder_inputs"], spec_inputs["decoder_inputs"], spec_labels):
        assert spec.dtype == tf.int32 and spec.shape.rank == 2

    # Filtering, counted independently with the plain-Python tokenizers, on the pairs with their placeholders
    # protected (as the pipeline does, since these tokenizers hold the placeholder tokens).
    from keras_transformer.data.placeholders import PLACEHOLDER_TOKENS, protect_pairs

    sources, targets = protect_pairs(dev.sources, dev.targets)
    assert sum(PLACEHOLDER_TOKENS[0] in t for t in targets) > 50
    src_lengths = np.array([len(src_tok.encode(s)) + 1 for s in sources])
    tgt_lengths = np.array([len(tgt_tok.encode(t)) + 1 for t in targets])
    too_long = (src_lengths > MAX_LENGTH) | (tgt_lengths > MAX_LENGTH)
    assert too_long.sum() > 0
    assert stats.num_pairs == len(dev) == 1000
    assert stats.num_filtered == too_long.sum()
    assert stats.num_examples == len(dev) - too_long.sum()

    expected_pairs = sorted(
        (tuple(src_tok.encode(s)) + (END_ID,), tuple(tgt_tok.encode(t)))
        for s, t, bad in zip(sources, targets, too_long) if not bad
    )
    seen_pairs = []
    all_batches = batches(dataset)
    assert len(all_batches) == stats.num_batches
    for encoder, decoder, labels in all_batches:
        assert encoder.shape[0] == decoder.shape[0] == labels.shape[0] <= 16
        assert decoder.shape == labels.shape
        assert encoder.shape[1] == labels.shape[1] in stats.bucket_boundaries
        assert (decoder[:, 0] == START_ID).all()
        for enc_row, dec_row, label_row in zip(encoder, decoder, labels):
            n = real_length(label_row)
            assert label_row[n - 1] == END_ID and (label_row[n:] == PAD_ID).all()
            assert (dec_row[1:n] == label_row[: n - 1]).all() and (dec_row[n:] == PAD_ID).all()
            m = real_length(enc_row)
            assert enc_row[m - 1] == END_ID
            assert max(m, n) <= MAX_LENGTH
            seen_pairs.append((tuple(enc_row[:m]), tuple(label_row[: n - 1])))
    assert sorted(seen_pairs) == expected_pairs  # every kept pair exactly once


def test_bucketing_reduces_padding(setup):
    dev, src_tok, tgt_tok = setup
    kwargs = dict(max_length=MAX_LENGTH, tokens_per_batch=256, seed=0)
    bucketed, stats = make_dataset(dev.sources, dev.targets, src_tok, tgt_tok, **kwargs)
    single, single_stats = make_dataset(
        dev.sources, dev.targets, src_tok, tgt_tok, bucket_boundaries=[MAX_LENGTH], **kwargs
    )
    measured, measured_single = padding_share(bucketed), padding_share(single)
    assert measured == pytest.approx(stats.padding_share, abs=1e-9)
    assert measured_single == pytest.approx(single_stats.padding_share, abs=1e-9)
    # (measured here: ~0.26 with buckets [4, 6, 8, 12, 16, 24] vs ~0.49 all padded to 24)
    assert measured < 0.35 and measured_single > 0.45
    assert measured < 0.6 * measured_single
    assert single_stats.bucket_boundaries == (MAX_LENGTH,)
    assert "padding share" in stats.summary()
    as_dict = stats.to_dict()
    assert as_dict["bucket_boundaries"] == list(stats.bucket_boundaries)
    assert as_dict["num_filtered"] == stats.num_filtered and "filtered_share" in as_dict

    # tokens_per_batch: batch size per bucket = tokens_per_batch // boundary
    assert stats.bucket_batch_sizes == tuple(256 // b for b in stats.bucket_boundaries)
    for encoder, _, labels in batches(bucketed):
        assert encoder.shape[0] <= 256 // labels.shape[1]


def test_deterministic_with_seed(setup):
    dev, src_tok, tgt_tok = setup

    def run(seed):
        dataset, _ = make_dataset(dev.sources, dev.targets, src_tok, tgt_tok,
                                  max_length=MAX_LENGTH, batch_size=32, seed=seed)
        return [np.concatenate([e.ravel(), d.ravel(), lab.ravel()]) for e, d, lab in batches(dataset)]

    first, again, other = run(5), run(5), run(6)
    assert len(first) == len(again) and all((a == b).all() for a, b in zip(first, again))
    assert len(first) != len(other) or any(
        a.shape != b.shape or (a != b).any() for a, b in zip(first, other)
    )


def test_drop_remainder_repeat_and_no_shuffle(setup):
    dev, src_tok, tgt_tok = setup
    dataset, stats = make_dataset(dev.sources, dev.targets, src_tok, tgt_tok, max_length=MAX_LENGTH,
                                  batch_size=8, drop_remainder=True, shuffle=False)
    sizes = {encoder.shape[0] for encoder, _, _ in batches(dataset)}
    assert sizes == {8} and stats.num_batches == sum(c // 8 for c in stats.bucket_counts)
    repeated, _ = make_dataset(dev.sources, dev.targets, src_tok, tgt_tok, max_length=MAX_LENGTH,
                               batch_size=64, repeat=True)
    assert len(batches(repeated.take(3 * stats.num_batches))) == 3 * stats.num_batches


def test_preprocessor_encoder_ids_are_those_of_training(setup):
    """The preprocessor (what decoding and the exports use) gives the encoder inputs the training batches hold."""
    from keras_transformer.preprocessor import TransformerSeq2SeqLMPreprocessor

    dev, src_tok, tgt_tok = setup
    texts = dev.sources[:3]
    preprocessor = TransformerSeq2SeqLMPreprocessor(src_tok, tgt_tok, max_length=MAX_LENGTH)
    encoder = preprocessor.generate_preprocess(texts)["encoder_inputs"].numpy()
    assert encoder.dtype == np.int32
    for row, text in zip(encoder, texts):
        ids = src_tok.encode(preprocessor.protect([text])[0][0]) + [END_ID]
        assert row[: len(ids)].tolist() == ids and (row[len(ids):] == PAD_ID).all()
    dataset, _ = make_dataset(texts, dev.targets[:3], src_tok, tgt_tok, max_length=MAX_LENGTH, batch_size=1,
                              bucket_boundaries=[MAX_LENGTH], shuffle=False)
    trained = sorted(tuple(int(t) for t in e[0] if t != PAD_ID) for e, _, _ in batches(dataset))
    assert trained == sorted(tuple(int(t) for t in row if t != PAD_ID) for row in encoder)
    short = TransformerSeq2SeqLMPreprocessor(src_tok, tgt_tok, max_length=4)
    with pytest.warns(UserWarning, match="more than 3 tokens"):
        capped = short.encode_sources([dev.sources[0]])
    assert len(capped[0]) == 4 and capped[0][-1] == END_ID

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def encode(batch):
        return preprocessor.generate_preprocess(batch)["encoder_inputs"]

    np.testing.assert_array_equal(encode(tf.constant(texts)).numpy(), encoder)


def test_bad_arguments(setup):
    dev, src_tok, tgt_tok = setup
    with pytest.raises(ValueError, match="same length"):
        make_dataset(dev.sources, dev.targets[:-1], src_tok, tgt_tok)
    with pytest.raises(ValueError, match="longer than max_length"):
        make_dataset(dev.sources[:20], dev.targets[:20], src_tok, tgt_tok, max_length=2)
