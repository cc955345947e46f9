"""Decoding: the key/value cache changes nothing but speed; beam search and sampling behave."""

import threading

import numpy as np
import pytest
import tensorflow as tf

from keras_transformer.data import END_ID, PAD_ID, load_bundled_corpus
from keras_transformer.decoding import beam_search, greedy_search, length_penalty, sample
from keras_transformer.decoding.beam_search import BeamStrategy, top_k_in_blocks
from keras_transformer.decoding.loop import block_ends
from keras_transformer.translator import Translator, pad_batch


@pytest.fixture(scope="module")
def task(tiny_run_dir):
    """The trained tiny model, loaded once; each test builds the Translators it needs around it."""
    from keras_transformer.run_directory import load_seq2seq_lm

    return load_seq2seq_lm(tiny_run_dir)


@pytest.fixture(scope="module")
def translator(task):
    return Translator(task)


# Tests of how batches are scheduled run without XLA and with outputs of at most this many tokens: a loop's steps
# then cost little, and which batches go to which thread does not depend on the output length.
SCHEDULING = dict(jit_compile=False, max_output_length=10)


@pytest.fixture(scope="module")
def sources():
    return load_bundled_corpus("dev").sources[:24]


def watch_loops(translator, watch):
    """From now on `watch(ids)` sees each batch part that `translator`'s compiled loops (built by earlier calls) are
    given, before the loop runs it; an exception in `watch` is the loop's."""
    def watched(loop):
        def run(ids):
            watch(ids)
            return loop(ids)

        return run

    for key, loop in list(translator._compiled.items()):
        translator._compiled[key] = watched(loop)


def test_cached_greedy_equals_full_recomputation_on_a_trained_model(translator, sources):
    # A batch of sources of mixed lengths (4 to 20+ tokens), padded together.
    encoder_ids = pad_batch(translator.encode_sources(sources), max_length=translator.config.max_length)
    lengths = (encoder_ids != PAD_ID).sum(1)
    assert lengths.min() < lengths.max() / 2
    cached, cached_scores = translator.translate_ids(encoder_ids, "greedy", use_cache=True)
    full, full_scores = translator.translate_ids(encoder_ids, "greedy", use_cache=False)
    np.testing.assert_array_equal(cached, full)
    np.testing.assert_allclose(cached_scores, full_scores, atol=1e-3)
    assert ((cached != PAD_ID) & (cached != END_ID)).sum() > len(sources)  # real tokens, not only END


@pytest.mark.parametrize("decoding, options, batch", [("greedy", {}, 24), ("greedy", {}, 17), ("beam", {"beam_size": 3, "alpha": 0.6}, 9)])
def test_decoding_in_two_shards_gives_the_tokens_of_one_loop_in_batch_order(task, sources, decoding, options, batch):
    one = Translator(task, decode_shards=1)
    two = Translator(task, decode_shards=2)
    encoder_ids = pad_batch(one.encode_sources(sources[:batch]), max_length=one.config.max_length)
    single, single_scores = one.translate_ids(encoder_ids, decoding, **options)

    two.translate_ids(encoder_ids, decoding, **options)  # builds the compiled loop; then record the batches it is given
    seen = []
    watch_loops(two, lambda ids: seen.append(tuple(ids.shape)))
    sharded, sharded_scores = two.translate_ids(encoder_ids, decoding, **options)

    width = encoder_ids.shape[1]
    assert sorted(seen) == sorted([((batch + 1) // 2, width), (batch // 2, width)])  # two halves, not one batch
    np.testing.assert_array_equal(sharded, single)
    np.testing.assert_allclose(sharded_scores, single_scores, atol=1e-5)
    assert ((single != PAD_ID) & (single != END_ID)).sum() > batch  # real tokens, not only END


def test_translate_hands_the_next_batch_to_the_decoding_threads_before_this_one_is_done(task):
    """While one thread finishes the longest output of a batch, the other goes on with the next batch: the first
    half of batch 1 may only finish once a half of batch 2 has started (with a barrier per batch it never would),
    and the translations are those of one loop per batch, in input order."""
    texts = load_bundled_corpus("dev").sources[:32]
    expected = Translator(task, decode_shards=1, **SCHEDULING).translate(texts, batch_size=16)
    two = Translator(task, decode_shards=2, **SCHEDULING)
    assert two.translate(texts, batch_size=16) == expected  # also compiles every shape
    started, batch_2_started = [], threading.Event()

    def watch(ids):
        started.append(ids.shape)
        if len(started) == 3:
            batch_2_started.set()
        if len(started) == 1:
            assert batch_2_started.wait(60), "batch 2 was not handed out before batch 1 was done"

    watch_loops(two, watch)
    assert two.translate(texts, batch_size=16) == expected
    assert len(started) == 4  # two batches of 16, each in two halves


@pytest.mark.parametrize("decoding, options, parts", [("greedy", {}, 1), ("beam", {"beam_size": 4, "alpha": 0.6}, 2)])
def test_translate_decodes_small_batches_whole_side_by_side_and_splits_large_ones(task, decoding, options, parts):
    """With more batches than decoding threads, a batch of 16 greedy rows goes to one thread whole (halves would
    have fewer than MIN_PART_ROWS rows), 16 sources x 4 beams is split in two; same translations as one loop."""
    texts = load_bundled_corpus("dev").sources[:48]  # 3 batches of 16
    expected = Translator(task, decode_shards=1, **SCHEDULING).translate(texts, batch_size=16, decoding=decoding, **options)
    two = Translator(task, decode_shards=2, **SCHEDULING)
    assert two.translate(texts, batch_size=16, decoding=decoding, **options) == expected
    seen = []
    watch_loops(two, lambda ids: seen.append(int(ids.shape[0])))
    two.translate(texts, batch_size=16, decoding=decoding, **options)
    assert sorted(seen) == [16 // parts] * 3 * parts


def test_an_error_in_one_batch_stops_translate_without_decoding_the_rest_in_the_background(task):
    texts, beams = load_bundled_corpus("dev").sources[:96], {"decoding": "beam", "beam_size": 4}
    two = Translator(task, decode_shards=2, **SCHEDULING)  # 6 batches of 16 x 4 rows, each in two halves
    two.translate(texts[:16], batch_size=16, **beams)
    started, translate_returned = [], threading.Event()

    def failing(ids):
        started.append(ids.shape)
        if len(started) == 1:
            raise RuntimeError("decoding failed")
        translate_returned.wait(60)  # the other halves are busy until translate has given up

    watch_loops(two, failing)
    with pytest.raises(RuntimeError, match="decoding failed"):
        two.translate(texts, batch_size=16, **beams)
    translate_returned.set()
    two._pool.shutdown(wait=True)  # whatever was still running has finished
    # Started: the failing half, the other half of batch 1 and at most one half of the batches handed out ahead
    # (the rest were dropped), out of 12 halves.
    assert len(started) <= 3, started


def test_sampling_is_not_sharded(task, sources):
    """Random draws depend on the batch they are drawn for, so a sampled batch is decoded as one."""
    two = Translator(task, decode_shards=2)
    encoder_ids = pad_batch(two.encode_sources(sources[:20]), max_length=two.config.max_length)
    two.translate_ids(encoder_ids[:1], "sample", top_k=5)
    seen = []
    watch_loops(two, lambda ids: seen.append(tuple(ids.shape)))
    two.translate_ids(encoder_ids, "sample", top_k=5)
    assert seen == [encoder_ids.shape]


def test_decode_shards_auto_and_bad_values(monkeypatch):
    import keras_transformer.translator as translator_module

    monkeypatch.setattr(translator_module.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert translator_module.resolve_decode_shards("auto") == 1
    monkeypatch.setattr(translator_module.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert translator_module.resolve_decode_shards("auto") == 2
    assert translator_module.resolve_decode_shards(3) == 3
    for bad in (0, -1, 1.5, "two", True):
        with pytest.raises(ValueError, match="decode_shards"):
            translator_module.resolve_decode_shards(bad)


def test_every_sequence_stops_at_its_own_end(translator, sources):
    encoder_ids = pad_batch(translator.encode_sources(sources), max_length=translator.config.max_length)
    ids, _ = translator.translate_ids(encoder_ids, "greedy")
    for row in ids:
        ends = np.flatnonzero(row == END_ID)
        if len(ends):
            assert np.all(row[ends[0] + 1 :] == PAD_ID)


def test_beam_search_of_width_one_is_greedy_and_nbest_is_sorted(translator, sources):
    encoder_ids = pad_batch(translator.encode_sources(sources[:8]), max_length=translator.config.max_length)
    greedy, _ = translator.translate_ids(encoder_ids, "greedy")
    beam1, _ = translator.translate_ids(encoder_ids, "beam", beam_size=1, alpha=0.0)
    np.testing.assert_array_equal(beam1[:, 0], greedy)
    nbest = translator.translate_nbest(sources[:8], beam_size=4, alpha=0.6)
    for hypotheses in nbest:
        assert len(hypotheses) == 4
        scores = [score for _, score in hypotheses]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("search, options", [("greedy", {}), ("beam", {"beam_size": 3, "alpha": 0.6})])
def test_decoding_in_cache_blocks_gives_the_tokens_of_one_loop(translator, sources, monkeypatch, search, options):
    import keras_transformer.decoding.beam_search as beam_search_module
    from keras_transformer.decoding import loop

    search = beam_search_module.beam_search if search == "beam" else greedy_search
    encoder_ids = tf.constant(pad_batch(translator.encode_sources(sources[:12]), max_length=translator.config.max_length))
    model, config, steps = translator._decode_model, translator.config, translator.max_output_length
    results = {}
    for block in (None, 5):
        monkeypatch.setattr(beam_search_module, "CACHE_BLOCK", block)
        if search is greedy_search:  # greedy runs one loop; make its loop run in blocks
            monkeypatch.setattr(loop, "block_ends", lambda max_steps, _, block=block: block_ends(max_steps, block))
        results[block] = [t.numpy() for t in tf.function(lambda x: search(model, config, x, steps, **options))(encoder_ids)]
    (one_ids, one_scores), (blocked_ids, blocked_scores) = results[None], results[5]
    np.testing.assert_array_equal(blocked_ids, one_ids)
    np.testing.assert_allclose(blocked_scores, one_scores, atol=1e-4)
    assert (one_ids == END_ID).any() and ((one_ids != PAD_ID) & (one_ids != END_ID)).sum() > 12


@pytest.mark.parametrize("search, options", [("greedy", {}), ("beam", {"beam_size": 3, "alpha": 0.6})])
def test_dropping_finished_sources_gives_the_same_tokens_with_fewer_row_steps(translator, sources, monkeypatch, search, options):
    """`halvings` moves the unfinished sources into smaller loops: the tokens and scores must be those of one loop
    over the whole batch (compiled with XLA, as the Translator runs it), and the decoder must run fewer row-steps
    (counted without XLA, where a variable can count them)."""
    import keras_transformer.decoding.beam_search as beam_search_module
    from keras_transformer.decoding.state import DecoderState

    search = beam_search_module.beam_search if search == "beam" else greedy_search
    encoder_ids = tf.constant(pad_batch(translator.encode_sources(sources[:16]), max_length=translator.config.max_length))
    model, config, steps = translator._decode_model, translator.config, translator.max_output_length
    run = lambda halvings, jit: [t.numpy() for t in tf.function(lambda x: search(model, config, x, steps, halvings=halvings, **options), jit_compile=jit)(encoder_ids)]  # noqa: E731
    (one_ids, one_scores), (halved_ids, halved_scores) = run(0, True), run(2, True)
    np.testing.assert_array_equal(halved_ids, one_ids)
    np.testing.assert_allclose(halved_scores, one_scores, atol=1e-5)
    lengths = np.argmax(np.reshape(one_ids, (-1, one_ids.shape[-1])) == END_ID, axis=-1)
    assert lengths.min() < lengths.max() / 2  # outputs of unequal length: something to drop

    row_steps = tf.Variable(0)
    step = DecoderState.step

    def counting_step(self, tokens, index, caches):
        row_steps.assign_add(tf.shape(tokens)[0])
        return step(self, tokens, index, caches)

    monkeypatch.setattr(DecoderState, "step", counting_step)
    counted = {}
    for halvings in (0, 2):
        row_steps.assign(0)
        ids, _ = run(halvings, False)
        np.testing.assert_array_equal(ids, one_ids)
        counted[halvings] = int(row_steps.numpy())
    assert counted[2] < counted[0], counted


def test_translator_halves_only_loops_of_enough_sources(task, sources):
    from keras_transformer import translator as translator_module

    one = Translator(task, decode_shards=1, **SCHEDULING)  # which loops it builds
    for batch in (translator_module.MIN_HALVING_SOURCES - 1, translator_module.MIN_HALVING_SOURCES):
        one.translate_ids(pad_batch(one.encode_sources(sources[:batch]), max_length=one.config.max_length), "greedy")
    assert sorted(key[2] for key in one._compiled) == [0, translator_module.HALVINGS["greedy"]]
    with pytest.raises(ValueError, match="halvings"):
        greedy_search(one._decode_model, one.config, tf.constant([[5, 2]]), 4, halvings=-1)


def test_block_ends():
    assert block_ends(31, None) == [31]
    assert block_ends(31, 5) == [5, 10, 15, 20, 25, 30, 31]
    assert block_ends(32, 16) == [16, 32]
    assert block_ends(10, 16) == [10]
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="cache_block"):
            block_ends(31, bad)
    with pytest.raises(ValueError, match="cache_block"):
        block_ends(4, 0)  # refused even when one loop would do


def test_beam_step_picks_the_best_candidates_over_all_beams_with_ties_to_the_lower_index():
    batch, beam, vocab = 2, 3, 7
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 3, size=(batch * beam, vocab)).astype("float32")  # many ties
    scores = np.array([[0.0, -0.5, -0.5], [-1.0, 0.0, -1e9]], "float32")
    finished = np.array([False, True, False, False, False, False])
    strategy = BeamStrategy(batch, beam, vocab)
    tokens, parents, (new_scores, _) = strategy.advance(tf.constant(logits), 0, tf.constant(finished), (tf.constant(scores), tf.zeros([batch, beam], tf.int32)))
    log_probs = tf.nn.log_softmax(logits).numpy()
    log_probs[finished] = strategy.after_end.numpy()
    candidates = (scores[:, :, None] + log_probs.reshape(batch, beam, vocab)).reshape(batch, beam * vocab)
    best = np.argsort(-candidates, axis=1, kind="stable")[:, :beam]  # ties: the lower flat index first
    np.testing.assert_allclose(new_scores.numpy(), np.take_along_axis(candidates, best, 1), rtol=1e-6)
    np.testing.assert_array_equal(tokens.numpy(), (best % vocab).reshape(-1))
    np.testing.assert_array_equal(parents.numpy(), (best // vocab + np.arange(batch)[:, None] * beam).reshape(-1))


@pytest.mark.parametrize("shape, k, block", [((3, 4, 1000), 4, 32), ((5, 250), 3, 8), ((2, 3, 80), 4, 16), ((2, 7), 4, 32)])
def test_top_k_in_blocks_is_top_k_with_ties_to_the_lower_index(shape, k, block):
    """Same values and indices as tf.math.top_k, eager and under XLA: many ties inside and across blocks, a
    vocabulary that is not a multiple of the block (the last block padded), a winner in that last block, entries at
    -1e9 (a finished beam), and a vocabulary of k blocks or fewer (plain top_k)."""
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4, size=shape).astype("float32")
    values[..., -1] = 5.0
    values[0] = -1e9
    values.reshape(-1, shape[-1])[1, 2] = 0.0  # a row of -1e9 but one entry
    expected = tf.math.top_k(values, k=k)
    for jit in (False, True):
        top, indices = tf.function(lambda v: top_k_in_blocks(v, k, block), jit_compile=jit)(tf.constant(values))
        np.testing.assert_array_equal(top.numpy(), expected.values.numpy())
        np.testing.assert_array_equal(indices.numpy(), expected.indices.numpy())


def _teacher_forced_log_probability(translator, encoder_ids, tokens):
    """Sum of log P(token) over each row of `tokens` up to and including its END, by running the full model."""
    import keras

    from keras_transformer.data import START_ID

    from keras_transformer.decoding.state import allowed_placeholders

    decoder_inputs = np.concatenate([np.full((len(tokens), 1), START_ID, np.int32), tokens[:, :-1]], axis=1)
    logits = keras.ops.convert_to_numpy(translator._decode_model({"encoder_inputs": encoder_ids, "decoder_inputs": decoder_inputs}))
    # The searches never choose a placeholder token the source lacks: score with the same mask.
    allowed = allowed_placeholders(encoder_ids, translator.preprocessor.placeholder_ids, logits.shape[-1]).numpy()
    logits = np.where(allowed[:, None, :], logits, np.finfo(np.float32).min)
    log_probs = keras.ops.convert_to_numpy(keras.ops.log_softmax(logits, axis=-1))
    chosen = np.take_along_axis(log_probs, tokens[:, :, None], axis=-1)[:, :, 0]
    ended = np.cumsum(tokens == END_ID, axis=1) - (tokens == END_ID)  # 0 up to and including the first END
    return np.where(ended == 0, chosen, 0.0).sum(axis=1)


def test_beam_and_greedy_scores_are_the_log_probabilities_of_their_tokens(translator, sources):
    """Each search's score is exactly what the full (uncached) model assigns to the tokens it returns; beam search
    (alpha 0) keeps the best of its beams first. (Beam search is not guaranteed to beat greedy on every sentence:
    a greedy prefix can leave the beam, so that is not asserted.)"""
    encoder_ids = pad_batch(translator.encode_sources(sources[:8]), max_length=translator.config.max_length)
    greedy, greedy_scores = translator.translate_ids(encoder_ids, "greedy")
    np.testing.assert_allclose(_teacher_forced_log_probability(translator, encoder_ids, greedy), greedy_scores, atol=2e-3)
    beams, beam_scores = translator.translate_ids(encoder_ids, "beam", beam_size=4, alpha=0.0)
    for k in range(4):
        np.testing.assert_allclose(_teacher_forced_log_probability(translator, encoder_ids, beams[:, k]), beam_scores[:, k], atol=2e-3)
    assert np.all(np.diff(beam_scores, axis=1) <= 1e-6)


def test_length_penalty_is_gnmt():
    assert float(length_penalty(1, 0.0)) == 1.0
    assert float(length_penalty(7, 1.0)) == pytest.approx(2.0)


def test_sampling_is_seeded_and_top_k_one_is_greedy(translator, sources):
    a = translator.translate(sources[:6], decoding="sample", seed=3, temperature=1.5)
    b = translator.translate(sources[:6], decoding="sample", seed=3, temperature=1.5)
    c = translator.translate(sources[:6], decoding="sample", seed=4, temperature=1.5)
    assert a == b and a != c
    assert translator.translate(sources[:6], decoding="sample", top_k=1, seed=9) == translator.translate(sources[:6])


@pytest.mark.parametrize("options, message", [({"temperature": 0}, "temperature"), ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k")])
def test_bad_sampling_options(translator, options, message):
    with pytest.raises(ValueError, match=message):
        translator.translate(["설정"], decoding="sample", **options)


def test_translator_rejects_bad_input(translator):
    with pytest.raises(TypeError):
        translator.translate([1, 2])
    with pytest.raises(ValueError, match="Unknown decoding 'magic'"):
        translator.translate(["설정"], decoding="magic")
    with pytest.raises(ValueError, match="greedy decoding does not take beam_size"):
        translator.translate(["설정"], decoding="greedy", beam_size=4)
    assert translator.translate([]) == []


@pytest.mark.parametrize("jit_compile", [False, True])
def test_first_argmax_is_tf_argmax_including_ties(jit_compile):
    """Greedy's argmax (two reductions, for XLA's sake) picks the same token as tf.argmax, ties to the lowest index."""
    from keras_transformer.decoding.greedy import first_argmax

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 1000)).astype("float32")
    logits[:8, 500:] = logits[:8].max(axis=1, keepdims=True)  # ties with the maximum, first at index 500 or earlier
    logits[8] = 0.0  # an all-equal row: index 0
    logits[9, [7, 3, 900]] = 100.0
    chosen = tf.function(first_argmax, jit_compile=jit_compile)(tf.constant(logits)).numpy()
    np.testing.assert_array_equal(chosen, tf.argmax(logits, axis=-1, output_type=tf.int32).numpy())
    assert chosen[8] == 0 and chosen[9] == 3 and chosen.dtype == np.int32
