"""Placeholder protection: which forms are found, the restore rules, Python == graph, the decoding mask, the metric."""

import random

import numpy as np
import pytest
import tensorflow as tf

from keras_transformer.data import placeholders as ph
from keras_transformer.data.corpus import load_bundled_corpus
from keras_transformer.data.tokenizer import DEFAULT_USER_DEFINED_SYMBOLS, SubwordTokenizer

T = ph.PLACEHOLDER_TOKENS  # T[0] is the token of the first placeholder


@pytest.fixture(scope="module")
def corpus_lines():
    """500 real dev/test lines (both languages) that hold a placeholder, in file order."""
    lines = []
    for split in ("dev", "test"):
        corpus = load_bundled_corpus(split)
        lines += [text for pair in zip(corpus.sources, corpus.targets) for text in pair]
    lines = [text for text in lines if ph.find_placeholders(text)]
    assert len(lines) >= 500
    return lines[:500]


def _graph_protect(texts, markup=False):
    protected, placeholders = ph.tf_protect(tf.constant(texts, tf.string), markup=markup)
    return [t.decode() for t in protected.numpy()], [[p.decode() for p in row] for row in placeholders.to_list()]


def _ragged(rows):
    return tf.RaggedTensor.from_row_lengths(
        tf.constant([p for row in rows for p in row], tf.string), [len(row) for row in rows]
    )


# ------------------------------------------------------------------------------------------ what is found
@pytest.mark.parametrize(
    "text, expected",
    [
        ("Cannot open %s: %d", ["%s", "%d"]),
        ("%1$s of %2$d, %1$.2f, %2$*1$d, %1$'d", ["%1$s", "%2$d", "%1$.2f", "%2$*1$d", "%1$'d"]),
        ("%ld %lu %lld %zu %hhd %Lf %jd", ["%ld", "%lu", "%lld", "%zu", "%hhd", "%Lf", "%jd"]),
        ("%-10s %02d %'d %+d %#x %.2f %.*s %*d %10.3f", ["%-10s", "%02d", "%'d", "%+d", "%#x", "%.2f", "%.*s", "%*d", "%10.3f"]),
        ("%3d%% done, %15lu threads, %30s", ["%3d", "%%", "%15lu", "%30s"]),
        ("Qt %1 and %2, %10, locale %L1, plural %n, %Ln", ["%1", "%2", "%10", "%L1", "%n", "%Ln"]),
        ("%1x%2 pixels at %1x speed, %1h%2m", ["%1", "%2", "%1", "%1", "%2"]),  # Qt %1 followed by text
        ("%(name)s has %(count)d, %(ratio).1f, %(x)-5s %(y)r", ["%(name)s", "%(count)d", "%(ratio).1f", "%(x)-5s", "%(y)r"]),
        ("{} {0} {1} {name} {0:.2f} {:>10} {0!r} {obj.attr} {items[0]}",
         ["{}", "{0}", "{1}", "{name}", "{0:.2f}", "{:>10}", "{0!r}", "{obj.attr}", "{items[0]}"]),
        ("100%% sure", ["%%"]),
        ("%PRODUCTNAME needs %NAME", ["%PRODUCTNAME", "%NAME"]),
        ("%A, %B %e %H:%M %-I %p", ["%A", "%B", "%e", "%H", "%M", "%-I", "%p"]),
        ("%s이(가) %1개 %d번째", ["%s", "%1", "%d"]),  # Hangul right after the placeholder
        ("%shelp and %sFor", ["%s", "%s"]),  # one conversion letter, the rest is text
    ],
)  # fmt: skip
def test_finds_every_form(text, expected):
    assert ph.find_placeholders(text) == expected
    assert _graph_protect([text])[1] == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "100%", "50% off", "100% of the files", "ends with %", "5%)", "% d", "{", "}", "{ name }", "{ a | b }",
        "user@example.com", "<user@example.com>", "mailto:a.b@c.org?subject=x", "a < b > c",
        "%(unclosed", "%(name)", "$HOME ~/dir", "50%의 파일", "",
    ],
)  # fmt: skip
def test_does_not_match(text):
    assert ph.find_placeholders(text) == []
    assert ph.find_placeholders(text, markup=True) == []


def test_markup_only_when_asked():
    text = "<b>%s</b> &amp; <br/> <a href=\"x y\">%1</a> &#176;"
    assert ph.find_placeholders(text) == ["%s", "%1"]
    assert ph.find_placeholders(text, markup=True) == ["<b>", "%s", "</b>", "&amp;", "<br/>", '<a href="x y">', "%1", "</a>", "&#176;"]  # fmt: skip
    protected, placeholders = ph.protect(text, markup=True)
    assert _graph_protect([text], markup=True) == ([protected], [placeholders])


def test_tokens_never_occur_in_the_corpus_and_are_one_piece():
    assert ph.PLACEHOLDER_TOKENS == tuple(f"⦅{i}⦆" for i in range(1, ph.MAX_PLACEHOLDERS + 1))
    for split in ("train", "dev", "test"):
        corpus = load_bundled_corpus(split)
        assert not any("⦅" in t or "⦆" in t for t in corpus.sources + corpus.targets), split
    plain = load_bundled_corpus("dev").targets
    texts = [ph.protect(t)[0] for t in plain]
    assert set(ph.PLACEHOLDER_TOKENS) <= set(DEFAULT_USER_DEFINED_SYMBOLS)  # every tokenizer of the package has them
    tokenizer = SubwordTokenizer.train(texts, vocab_size=400, hard_vocab_limit=False)
    for token, token_id in zip(T, ph.placeholder_token_ids(tokenizer)):
        assert tokenizer.id_to_piece[token_id] == token
        assert token_id in tokenizer.encode(f"파일{token}을 열기")
    assert all(tokenizer.decode(tokenizer.encode(text)) == text for text in texts)
    with pytest.raises(ValueError, match="PLACEHOLDER_TOKENS"):
        without = [symbol for symbol in DEFAULT_USER_DEFINED_SYMBOLS if symbol not in ph.PLACEHOLDER_TOKENS]
        ph.placeholder_token_ids(SubwordTokenizer.train(plain, vocab_size=400, hard_vocab_limit=False, user_defined_symbols=without))


# ----------------------------------------------------------------------------------------- protect/restore
def test_protect_numbers_each_occurrence():
    assert ph.protect("%s of %s, {0} %d") == (f"{T[0]} of {T[1]}, {T[2]} {T[3]}", ["%s", "%s", "{0}", "%d"])
    assert ph.protect("no placeholder") == ("no placeholder", [])


def test_beyond_the_maximum_stays_unprotected():
    text = " ".join(f"%{i}" for i in range(1, 21))
    protected, placeholders = ph.protect(text)
    assert placeholders == [f"%{i}" for i in range(1, 17)]
    assert protected == " ".join(T) + " %17 %18 %19 %20"
    assert ph.restore(protected, placeholders) == text
    assert _graph_protect([text]) == ([protected], [placeholders])


def test_round_trip_on_corpus(corpus_lines):
    for text in corpus_lines:
        protected, placeholders = ph.protect(text)
        assert placeholders and ph.find_placeholders(protected) == []
        assert ph.restore(protected, placeholders) == text


@pytest.mark.parametrize(
    "translation, expected",
    [
        (f"{T[1]} then {T[0]} then {T[2]}", "%s then %s then %d"),  # the model's order
        (f"{T[0]} {T[0]} {T[0]} x", "%s %s x %d"),  # repeats only as often as the source has the string
        (f"{T[2]} and {T[2]}", "%d and %s %s"),  # a repeated %d is dropped, the missing %s appended
        (f"a {T[8]} b", "a b %s %s %d"),  # index the source lacks: dropped, one space left
        (f"{T[8]} b", "b %s %s %d"),
        (f"a {T[8]}", "a %s %s %d"),
        (f"a{T[8]}b", "ab %s %s %d"),
        (f"a{T[8]} {T[9]} b", "a b %s %s %d"),
        (f"{T[2]} only", "%d only %s %s"),  # missing ones appended in source order
        ("", "%s %s %d"),
        ("⦅0⦆ ⦅abc⦆ ⦅100⦆ %s", "⦅0⦆ ⦅abc⦆ ⦅100⦆ %s %s %s %d"),  # not tokens: left alone
    ],
)
def test_restore_rules(translation, expected):
    placeholders = ["%s", "%s", "%d"]
    assert ph.restore(translation, placeholders) == expected
    assert ph.tf_restore(tf.constant([translation]), _ragged([placeholders])).numpy()[0].decode() == expected


def test_restore_without_placeholders_drops_tokens():
    assert ph.restore(f"Open {T[0]} now", []) == "Open now"
    assert ph.restore("Open now", []) == "Open now"


def test_protect_pair_maps_target_to_source_tokens():
    assert ph.protect_pair("%2의 %1", "%1 of %2") == (f"{T[0]}의 {T[1]}", f"{T[1]} of {T[0]}", ["%2", "%1"])
    # Positional printf in the source matches the plain conversion in the target; the restored text prints the same.
    source, target, placeholders = ph.protect_pair("%2$s의 %1$d", "%d of %s")
    assert target == f"{T[1]} of {T[0]}"
    assert ph.restore(target, placeholders) == "%1$d of %2$s"
    # A target placeholder the source lacks stays text.
    assert ph.protect_pair("%s 파일", "file %s %d")[1] == f"file {T[0]} %d"


# ------------------------------------------------------------------------------------------ Python == graph
def _perturbed(corpus_lines):
    """Translations a model might produce: the protected text reordered, with tokens dropped, repeated, added."""
    rng = random.Random(0)
    cases = []
    for text in corpus_lines:
        protected, placeholders = ph.protect(text)
        words = protected.split(" ")
        operation = rng.randrange(5)
        if operation == 0:
            rng.shuffle(words)
        elif operation == 1:
            del words[rng.randrange(len(words))]
        elif operation == 2:
            words.insert(rng.randrange(len(words) + 1), rng.choice(T) + rng.choice(T))
        elif operation == 3:
            words = [word for word in words if "⦅" not in word]
        cases.append((" ".join(words), placeholders))
    return cases


def test_graph_matches_python_on_corpus(corpus_lines):
    expected = [ph.protect(text) for text in corpus_lines]
    protected, placeholders = _graph_protect(corpus_lines)
    assert list(zip(protected, placeholders)) == expected

    cases = _perturbed(corpus_lines)
    restored = ph.tf_restore(tf.constant([c[0] for c in cases]), _ragged([c[1] for c in cases])).numpy()
    assert [r.decode() for r in restored] == [ph.restore(*case) for case in cases]


def test_graph_in_tf_function_and_saved_model(corpus_lines, tmp_path):
    class Protection(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string)])
        def round_trip(self, texts, translations):
            protected, placeholders = ph.tf_protect(texts)
            return protected, ph.tf_restore(translations, placeholders)

    tf.saved_model.save(Protection(), str(tmp_path / "protection"))
    loaded = tf.saved_model.load(str(tmp_path / "protection"))
    cases = _perturbed(corpus_lines)
    protected, restored = loaded.round_trip(tf.constant(corpus_lines), tf.constant([c[0] for c in cases]))
    assert [p.decode() for p in protected.numpy()] == [ph.protect(text)[0] for text in corpus_lines]
    assert [r.decode() for r in restored.numpy()] == [ph.restore(*case) for case in cases]
    empty = loaded.round_trip(tf.constant([], tf.string), tf.constant([], tf.string))
    assert [t.shape.as_list() for t in empty] == [[0], [0]]
    assert loaded.round_trip(tf.constant([""]), tf.constant([""]))[1].numpy().tolist() == [b""]


def test_graph_rejects_bad_shapes():
    with pytest.raises(ValueError, match="texts"):
        ph.tf_protect(tf.constant([["%s"]]))
    with pytest.raises(TypeError, match="RaggedTensor"):
        ph.tf_restore(tf.constant(["x"]), tf.constant([["%s"]]))


# ------------------------------------------------------------------------------------------------ decoding
def test_allowed_token_mask():
    ids = [10, 11, 12, 13]  # token ids of ⦅1⦆..⦅4⦆ in a vocabulary of 16
    allowed = ph.allowed_token_mask(ids, tf.constant([0, 2, 4, 9]), vocab_size=16).numpy()
    assert allowed.shape == (4, 16) and allowed.dtype == bool
    expected = np.ones((4, 16), bool)
    expected[0, 10:14] = False
    expected[1, 12:14] = False
    np.testing.assert_array_equal(allowed, expected)

    logits = tf.zeros([4, 16], tf.float16)
    masked = ph.mask_logits(logits, allowed).numpy()
    assert masked[0, 10] == np.finfo(np.float16).min and masked[0, 9] == 0 and np.isfinite(masked).all()

    with pytest.raises(ValueError, match="vocab_size"):
        ph.allowed_token_mask([3, 16], [1], vocab_size=16)
    with pytest.raises(ValueError, match="distinct"):
        ph.allowed_token_mask([3, 3], [1], vocab_size=16)


def test_allowed_token_mask_in_xla():
    mask = tf.function(lambda counts: ph.allowed_token_mask([5, 6], counts, vocab_size=8), jit_compile=True)
    np.testing.assert_array_equal(mask(tf.constant([1]))[0].numpy(), [True] * 6 + [False, True])


# --------------------------------------------------------------------------------------------------- metric
def test_placeholder_agreement():
    sources = ["%s 파일 %d개", "%1 폴더", "파일 열기", "%s %s"]
    hypotheses = ["%d files in %s", "folder", "Open %s", "%s and %s"]
    references = ["%s has %d files", "%1 folder", "Open file", "%s, %s %s"]
    assert ph.placeholder_agreement(sources, hypotheses, references) == {
        "sentences": 4,
        "with_placeholders": 3,
        "hypothesis_same": 2,  # order does not matter, the multiset does
        "hypothesis_percent": 66.67,
        "hypothesis_spurious": 1,  # "Open %s" for a source without placeholders
        "reference_same": 2,  # a duplicated %s is not the same multiset
        "reference_percent": 66.67,
    }
    assert ph.placeholder_agreement(["x"], ["y"])["hypothesis_percent"] is None
    with pytest.raises(ValueError, match="pair up"):
        ph.placeholder_agreement(["a", "b"], ["a"])
