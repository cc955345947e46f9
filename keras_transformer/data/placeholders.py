"""Format-placeholder protection: find ``%s``, ``%1$s``, ``%1``, ``{0}``, ``%(name)s`` ... and keep them intact.

A translation that drops or duplicates a format placeholder crashes the program that prints it. Before
tokenization, :func:`protect` replaces each placeholder by a reserved indexed token (the first by ``⦅1⦆``, the
second by ``⦅2⦆``, ...; OpenNMT style); the model learns to copy those tokens; after decoding, :func:`restore`
puts the original placeholders back in the order the model wrote the tokens and repairs what the model got wrong.
:func:`protect_pair` protects a training pair (the target's placeholders get the tokens of the equal source
placeholders, so reordering such as ``%1 of %2`` -> ``%2의 %1`` is learnt).

Every function exists twice with byte-identical results: in plain Python (no TensorFlow import; used for training
data, the Translator and the TFLite path) and in the TensorFlow graph (:func:`tf_protect`, :func:`tf_restore`;
``tf.strings`` and ``tensorflow_text`` RE2 ops that live in a SavedModel, so TF Serving clients get the same
protection). The regular expressions below are written in the common subset of Python ``re`` and RE2 (no
lookaround, no backreferences, no ``\\d``/``\\w``/``\\s``, whose meanings differ), and both engines pick the
leftmost-first alternative, so they find the same matches.

For decoding, :func:`allowed_token_mask` forbids the placeholder tokens a source does not have
(``⦅3⦆`` for a source with two placeholders) and :func:`mask_logits` applies that mask; :func:`restore` still
handles any stray token. :func:`placeholder_agreement` is the evaluation metric.

Rules (the same in Python and in the graph):

* **Indexing**: every *occurrence* gets its own token, in text order: ``"%s and %s"`` -> ``"⦅1⦆ and ⦅2⦆"`` with
  placeholders ``["%s", "%s"]``.
* **Maximum**: :data:`MAX_PLACEHOLDERS` (16) per text; the 17th and later occurrences are left in the text
  unprotected (the model then sees them as ordinary text; ``%s``, ``%d``, ``%1`` ... are single SentencePiece
  pieces anyway). In the bundled corpus no sentence has more than 16 (one training source has 16; with
  ``markup=True`` 4 have more, up to 33).
* **Restore**: a token ``⦅k⦆`` (``k`` = 1..99, written exactly so) stands for ``placeholders[k - 1]``; tokens are
  replaced where the model wrote them.

  - *Repeats*: a placeholder string is restored at most as many times as the source holds it; a token beyond
    that is dropped. (Source ``"%s %s"``: ``⦅1⦆ ⦅1⦆`` gives ``"%s %s"``; source ``"%s %d"``: the second ``⦅1⦆`` is
    dropped and ``%d`` appended.)
  - *Unknown index*: a token whose index the source did not have (``k`` > number of placeholders) is dropped.
  - *Dropped tokens* leave no double spaces: a dropped token and the spaces around it become one space between
    two words, nothing at the start or end of the text or between two non-space characters.
  - *Missing*: for each placeholder string, the source occurrences that were not restored (the last ones of that
    string) are appended at the end of the translation in source order, each after one space.
  - Anything that is not a token (``⦅0⦆``, ``⦅abc⦆``, a raw ``%s``) is left alone. A NUL character in a
    translation is read as a dropped token (it marks them internally).
"""

from __future__ import annotations

import collections
import re
from typing import Sequence

__all__ = [
    "MARKUP_PATTERN",
    "MAX_PLACEHOLDERS",
    "PLACEHOLDER_PATTERN",
    "PLACEHOLDER_TOKENS",
    "TOKEN_PATTERN",
    "allowed_token_mask",
    "find_placeholders",
    "mask_logits",
    "placeholder_agreement",
    "placeholder_token_ids",
    "raw_placeholder_ids",
    "protect",
    "protect_pair",
    "protect_pairs",
    "holds_placeholder_tokens",
    "restore",
    "tf_protect",
    "tf_restore",
]

MAX_PLACEHOLDERS = 16
# "⦅" U+2985 and "⦆" U+2986 (white parentheses) occur nowhere in the bundled corpus (tested). Add these to the
# tokenizers' user_defined_symbols so that each is one piece.
PLACEHOLDER_TOKENS: tuple[str, ...] = tuple(f"\u2985{index}\u2986" for index in range(1, MAX_PLACEHOLDERS + 1))
# What restore() reads as a token: the token format with 1..99 (two digits at most, so parsing cannot overflow).
TOKEN_PATTERN = "\u2985[1-9][0-9]?\u2986"

_PRINTF_LENGTH = "(?:hh|h|ll|l|j|z|Z|t|L|q)"
_POSITION = "[1-9][0-9]*\\$"
# Alternatives in priority order (leftmost-first: at one position the first alternative that matches wins).
_FORMAT_ALTERNATIVES = (
    # %% (a literal percent in a printf string; dropping one breaks the format).
    "%%",
    # Python %(name)s, with flags / width / precision: %(count)d, %(value).1f, %(name)-10s.
    "%\\([A-Za-z_][A-Za-z0-9_]*\\)[-+ #0]*(?:[0-9]+|\\*)?(?:\\.[0-9]+)?[diouxXeEfFgGcrsa]",
    # printf positional: %1$s, %2$d, %1$.2f, %1$'d, %2$*1$d.
    "%" + _POSITION + "[-+#0']*(?:[0-9]+|\\*(?:" + _POSITION + ")?)?(?:\\.(?:[0-9]+|\\*(?:" + _POSITION + ")?))?"
    + _PRINTF_LENGTH + "?[A-Za-z]",
    # printf width with precision: %10.3f, %5.1s.
    "%[1-9][0-9]*\\.(?:[0-9]+|\\*)" + _PRINTF_LENGTH + "?[A-Za-z]",
    # printf width without flags: %2d, %15lu, %30s. Width 1 and other letters are Qt instead (below): %1x%2,
    # %1h%2m, %1pc are Qt's %1 followed by text, far more common than printf widths of 1.
    "%(?:[2-9]|[1-9][0-9]+)" + _PRINTF_LENGTH + "?[dfisu]",
    # Qt %1 .. %99 and the locale-aware %L1 (%Ln, Qt's plural count, is matched as printf-like below).
    "%L?[1-9][0-9]?",
    # Upper-case names (LibreOffice %PRODUCTNAME, %NAME; xchat %C24); before the one-letter form below, which
    # would take %P of %PRODUCTNAME.
    "%[A-Z][A-Z0-9_]{2,}",
    # printf / strftime with optional flags, width after a flag, star, precision and length: %s, %ld, %zu, %-10s,
    # %02d, %'d, %.2f, %.*s, %*d, %-I, %Y, %m, %Ln. No space flag, so "50% off" is text.
    "%(?:[-+#0']+(?:[0-9]+|\\*)?|\\*)?(?:\\.(?:[0-9]+|\\*))?" + _PRINTF_LENGTH + "?[A-Za-z]",
    # Python str.format / C# / Java MessageFormat: {}, {0}, {name}, {0.attr}, {0[1]}, {0!r}, {0:.2f}, {:>10}.
    "\\{(?:[0-9]+|[A-Za-z_][A-Za-z0-9_]*)?(?:\\.[A-Za-z_][A-Za-z0-9_]*|\\[[A-Za-z0-9_]+\\])*(?:![rsa])?"
    "(?::[^{}\\t\\n ]*)?\\}",
)
PLACEHOLDER_PATTERN = "|".join(_FORMAT_ALTERNATIVES)
"""The format placeholders (Python ``re`` and RE2 syntax): printf incl. positional ``%1$s``, flags, width,
precision and length modifiers; strftime ``%Y``; Qt ``%1`` / ``%L1``; ``%%``; Python ``%(name)s`` and ``{name}`` /
``{0:.2f}``; LibreOffice ``%PRODUCTNAME``. Not matched: ``100%``, ``50% off``, a final ``%``, ``{`` or ``{ x }``."""

MARKUP_PATTERN = (
    "</?[A-Za-z][A-Za-z0-9:_-]*(?: [^<>]*)?/?>"  # <b>, </b>, <br/>, <br />, <a href="...">
    "|&(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#[xX][0-9A-Fa-f]+);"  # &amp; &#176; &#x2014;
)
"""Markup tags and character entities, protected only with ``markup=True``. Off by default: a wrong tag renders
badly but crashes nothing, and whether protecting tags helps the model is not measured yet. In the bundled corpus
tags are in 1.9% of train and 5.3-5.9% of dev/test targets (references keep the source's tags 96-100% of the
time), entities in 0.1% of train and in no dev/test sentence; with markup 4 training sources exceed 16 tokens."""

# Marks a dropped token while restoring; removed with the spaces around it (see the module docstring).
_DROPPED = "\x00"
_DROPPED_CLASS = "[ \\x00]"


def _gap_rules(end_anchor: str) -> tuple[tuple[str, str], ...]:
    """(pattern, replacement) pairs that remove dropped-token marks; ``end_anchor`` is ``\\Z`` (Python) or ``\\z``
    (RE2): both mean the very end of the text (``$`` would also match before a final newline in Python)."""
    run = _DROPPED_CLASS + "*\\x00" + _DROPPED_CLASS + "*"
    return (
        ("\\A" + run, ""),  # at the start of the text: nothing
        (run + end_anchor, ""),  # at the end: nothing
        (_DROPPED_CLASS + "*(?: \\x00|\\x00 )" + _DROPPED_CLASS + "*", " "),  # between words with a space: one space
        ("\\x00+", ""),  # between two non-space characters: nothing
    )


_RE2_GAP_RULES = _gap_rules("\\z")
_PY_GAP_RULES = tuple((re.compile(pattern), replacement) for pattern, replacement in _gap_rules("\\Z"))
_PY_PATTERNS = {False: re.compile(PLACEHOLDER_PATTERN), True: re.compile(PLACEHOLDER_PATTERN + "|" + MARKUP_PATTERN)}
_PY_TOKEN = re.compile(TOKEN_PATTERN)
_PY_POSITION = re.compile(_POSITION)


def _pattern(markup: bool) -> str:
    return _PY_PATTERNS[bool(markup)].pattern


# ----------------------------------------------------------------------------------------------- plain Python
def find_placeholders(text: str, markup: bool = False) -> list[str]:
    """The placeholders of ``text`` in order (each occurrence), per :data:`PLACEHOLDER_PATTERN` (with ``markup``,
    also :data:`MARKUP_PATTERN`)."""
    return _PY_PATTERNS[bool(markup)].findall(text)


def protect(text: str, markup: bool = False) -> tuple[str, list[str]]:
    """Replaces the first :data:`MAX_PLACEHOLDERS` placeholders of ``text`` by ``⦅1⦆``, ``⦅2⦆``, ...

    Returns:
        ``(protected_text, placeholders)``: ``placeholders[k - 1]`` is the string token ``⦅k⦆`` replaced.
    """
    placeholders: list[str] = []

    def replace(match) -> str:
        if len(placeholders) == MAX_PLACEHOLDERS:
            return match.group()
        placeholders.append(match.group())
        return PLACEHOLDER_TOKENS[len(placeholders) - 1]

    return _PY_PATTERNS[bool(markup)].sub(replace, text), placeholders


def _without_positions(placeholder: str) -> str:
    """``%2$s`` -> ``%s``, ``%1$*2$d`` -> ``%*d``: the printf conversion without its argument positions."""
    return _PY_POSITION.sub("", placeholder)


def protect_pair(source: str, target: str, markup: bool = False) -> tuple[str, str, list[str]]:
    """Protects a training pair: the source as :func:`protect` does; each target placeholder, in order, takes the
    token of the first source placeholder not taken yet that is the same string, or else the same but for printf
    argument positions (Korean ``%2$s의 %1$d`` against English ``%d of %s`` gives ``⦅2⦆ of ⦅1⦆``, restored as
    ``%1$d of %2$s``, which prints the same). Target placeholders with no such source placeholder stay as text.

    Returns:
        ``(protected_source, protected_target, placeholders)`` with the source's placeholders.
    """
    protected_source, placeholders = protect(source, markup=markup)
    free = list(range(len(placeholders)))  # source slots not taken yet, in source order

    def replace(match) -> str:
        found = match.group()
        same = [j for j in free if placeholders[j] == found] or [
            j for j in free if _without_positions(placeholders[j]) == _without_positions(found)
        ]
        if not same:
            return found
        free.remove(same[0])
        return PLACEHOLDER_TOKENS[same[0]]

    return protected_source, _PY_PATTERNS[bool(markup)].sub(replace, target), placeholders


def protect_pairs(sources: Sequence[str], targets: Sequence[str], markup: bool = False) -> tuple[list[str], list[str]]:
    """:func:`protect_pair` over a parallel corpus: `(protected sources, protected targets)`. Idempotent: protected
    text holds no placeholder any more."""
    protected = [protect_pair(source, target, markup=markup) for source, target in zip(sources, targets)]
    return [source for source, _, _ in protected], [target for _, target, _ in protected]


def holds_placeholder_tokens(tokenizer) -> bool:
    """Whether the tokenizer has every placeholder token as a piece (all tokenizers trained by this version do)."""
    try:
        placeholder_token_ids(tokenizer)
    except ValueError:
        return False
    return True


def restore(translation: str, placeholders: Sequence[str]) -> str:
    """Puts the placeholders back into a translation of a protected text (rules in the module docstring).

    Args:
        translation: Decoded text holding tokens ``⦅k⦆``.
        placeholders: What :func:`protect` returned for the source.
    """
    placeholders = list(placeholders)
    available = collections.Counter(placeholders)
    restored: collections.Counter = collections.Counter()
    pieces: list[str] = []
    position = 0
    for match in _PY_TOKEN.finditer(translation):
        pieces.append(translation[position : match.start()])
        index = int(match.group()[1:-1])
        placeholder = placeholders[index - 1] if index <= len(placeholders) else None
        if placeholder is not None and restored[placeholder] < available[placeholder]:
            restored[placeholder] += 1
            pieces.append(placeholder)
        else:
            pieces.append(_DROPPED)
        position = match.end()
    pieces.append(translation[position:])
    text = "".join(pieces)
    for pattern, replacement in _PY_GAP_RULES:
        text = pattern.sub(replacement, text)

    seen: collections.Counter = collections.Counter()
    missing = []
    for placeholder in placeholders:
        if seen[placeholder] >= restored[placeholder]:
            missing.append(placeholder)
        seen[placeholder] += 1
    return " ".join(([text] if text else []) + missing)


def placeholder_agreement(
    sources: Sequence[str],
    hypotheses: Sequence[str],
    references: Sequence[str] | None = None,
    markup: bool = False,
) -> dict:
    """How often translations keep the source's placeholders as exactly the same multiset.

    Only sentences whose source has a placeholder count for the rates. With ``references``, the same rate for the
    human translations, the realistic ceiling (98-99% on the bundled splits: Korean translators reorder with
    ``%2$s``, where English has ``%s``).

    Returns:
        ``{"sentences", "with_placeholders", "hypothesis_same", "hypothesis_percent", "hypothesis_spurious"}``
        (``hypothesis_spurious``: sentences whose source has no placeholder but the hypothesis has one), plus
        ``"reference_same"`` and ``"reference_percent"`` with references. Percentages are ``None`` when no
        source has a placeholder.
    """
    if len(hypotheses) != len(sources):
        raise ValueError(f"{len(sources)} sources but {len(hypotheses)} hypotheses: they must pair up.")
    if references is not None and len(references) != len(sources):
        raise ValueError(f"{len(sources)} sources but {len(references)} references: they must pair up.")

    def multiset(text: str) -> collections.Counter:
        return collections.Counter(find_placeholders(text, markup=markup))

    with_placeholders = hypothesis_same = reference_same = spurious = 0
    for i, source in enumerate(sources):
        expected = multiset(source)
        if not expected:
            spurious += bool(multiset(hypotheses[i]))
            continue
        with_placeholders += 1
        hypothesis_same += multiset(hypotheses[i]) == expected
        if references is not None:
            reference_same += multiset(references[i]) == expected

    def percent(count: int) -> float | None:
        return round(100.0 * count / with_placeholders, 2) if with_placeholders else None

    report = {
        "sentences": len(sources),
        "with_placeholders": with_placeholders,
        "hypothesis_same": hypothesis_same,
        "hypothesis_percent": percent(hypothesis_same),
        "hypothesis_spurious": spurious,
    }
    if references is not None:
        report["reference_same"] = reference_same
        report["reference_percent"] = percent(reference_same)
    return report


# ------------------------------------------------------------------------------------------- in the TF graph
def _string_vector(texts, name: str):
    import tensorflow as tf  # noqa: PLC0415 - the plain-Python half must not import TensorFlow

    texts = tf.convert_to_tensor(texts, dtype=tf.string)
    if texts.shape.rank is not None and texts.shape.rank != 1:
        raise ValueError(f"{name} must be a string vector [batch], got shape {texts.shape}")
    return texts


def _split_keeping(texts, pattern: str):
    """Ragged ``[batch, None]`` pieces of ``texts``: the matches of ``pattern`` and the text between them, in
    order, and whether each piece is a match. A piece between matches can never fully match itself (the search
    would have found a match at its start), so ``regex_full_match`` tells them apart exactly."""
    import tensorflow as tf  # noqa: PLC0415
    import tensorflow_text as tf_text  # noqa: PLC0415

    pieces, _, _ = tf_text.regex_split_with_offsets(texts, pattern, pattern)
    is_match = pieces.with_flat_values(tf.strings.regex_full_match(pieces.flat_values, pattern))
    return pieces, is_match


def tf_protect(texts, markup: bool = False):
    """:func:`protect` in the graph, for a batch.

    Args:
        texts: ``tf.string`` ``[batch]`` (works inside ``tf.function`` with a ``[None]`` signature).
        markup: Also protect :data:`MARKUP_PATTERN` (a Python bool: it picks the pattern when tracing).

    Returns:
        ``(protected, placeholders)``: ``tf.string`` ``[batch]`` and a ``tf.RaggedTensor`` ``[batch, None]`` of
        strings; ``placeholders.row_lengths()`` are the counts :func:`allowed_token_mask` takes.
    """
    import tensorflow as tf  # noqa: PLC0415

    texts = _string_vector(texts, "texts")
    pieces, is_match = _split_keeping(texts, _pattern(markup))
    # 1-based number of each match within its row: cumulative sum over the batch minus the rows before.
    counts = tf.cumsum(tf.cast(is_match.flat_values, tf.int64))
    before_row = tf.gather(tf.concat([tf.zeros([1], tf.int64), counts], 0), pieces.row_starts())
    number = counts - tf.gather(before_row, pieces.value_rowids())
    protected = tf.logical_and(is_match.flat_values, number <= MAX_PLACEHOLDERS)
    tokens = tf.strings.join(["\u2985", tf.strings.as_string(number), "\u2986"])
    joined = tf.strings.reduce_join(
        pieces.with_flat_values(tf.where(protected, tokens, pieces.flat_values)), axis=1
    )
    return joined, tf.ragged.boolean_mask(pieces, pieces.with_flat_values(protected))


def _earlier_equal(values, valid):
    """``[batch, L]`` int32: for each position, how many earlier valid positions of its row hold the same string."""
    import tensorflow as tf  # noqa: PLC0415

    positions = tf.range(tf.shape(values)[1])
    earlier = positions[:, tf.newaxis] > positions[tf.newaxis, :]  # [L (this), L (earlier)]
    same = tf.equal(values[:, :, tf.newaxis], values[:, tf.newaxis, :])
    return tf.reduce_sum(tf.cast(same & valid[:, tf.newaxis, :] & earlier, tf.int32), axis=2)


def _count_equal(values, others, others_valid):
    """``[batch, L]`` int32: for each of ``values`` ``[batch, L]``, how many valid ``others`` ``[batch, M]`` of
    its row hold the same string."""
    import tensorflow as tf  # noqa: PLC0415

    same = tf.equal(values[:, :, tf.newaxis], others[:, tf.newaxis, :]) & others_valid[:, tf.newaxis, :]
    return tf.reduce_sum(tf.cast(same, tf.int32), axis=2)


def tf_restore(translations, placeholders):
    """:func:`restore` in the graph, for a batch.

    Args:
        translations: ``tf.string`` ``[batch]``, decoded text holding tokens ``⦅k⦆``.
        placeholders: ``tf.RaggedTensor`` ``[batch, None]`` of strings, from :func:`tf_protect`.

    Returns:
        ``tf.string`` ``[batch]``.
    """
    import tensorflow as tf  # noqa: PLC0415

    translations = _string_vector(translations, "translations")
    if not isinstance(placeholders, tf.RaggedTensor) or placeholders.shape.rank != 2:
        raise TypeError(f"placeholders must be a tf.RaggedTensor [batch, None] of strings, got {placeholders!r}")
    pieces, is_token = _split_keeping(translations, TOKEN_PATTERN)
    pieces, is_token = pieces.to_tensor(""), is_token.to_tensor(False)  # [batch, P]
    # One empty column more, so that gathering index 0 works when no row has a placeholder.
    sources = tf.pad(placeholders.to_tensor(""), [[0, 0], [0, 1]], constant_values="")  # [batch, N + 1]
    num_sources = tf.cast(placeholders.row_lengths(), tf.int32)[:, tf.newaxis]
    in_source = tf.range(tf.shape(sources)[1])[tf.newaxis, :] < num_sources

    digits = tf.strings.regex_replace(tf.where(is_token, pieces, "0"), "[\u2985\u2986]", "")
    index = tf.strings.to_number(digits, out_type=tf.int32)  # 1..99 for tokens (TOKEN_PATTERN)
    valid = is_token & (index <= num_sources)
    meant = tf.where(valid, tf.gather(sources, tf.where(valid, index - 1, 0), batch_dims=1), "")  # [batch, P]
    kept = valid & (_earlier_equal(meant, valid) < _count_equal(meant, sources, in_source))

    text = tf.strings.reduce_join(tf.where(is_token, tf.where(kept, meant, _DROPPED), pieces), axis=1)
    for pattern, replacement in _RE2_GAP_RULES:
        text = tf.strings.regex_replace(text, pattern, replacement)

    missing = in_source & (_earlier_equal(sources, in_source) >= _count_equal(sources, meant, kept))
    appended = tf.strings.reduce_join(tf.ragged.boolean_mask(sources, missing), axis=1, separator=" ")
    return tf.where(
        tf.equal(text, ""),
        appended,
        tf.where(tf.equal(appended, ""), text, tf.strings.join([text, appended], separator=" ")),
    )


# -------------------------------------------------------------------------------------------------- decoding
def placeholder_token_ids(tokenizer) -> list[int]:
    """Ids of :data:`PLACEHOLDER_TOKENS` in a :class:`~keras_transformer.data.tokenizer.SubwordTokenizer`.

    Raises:
        ValueError: The tokenizer was trained without them as user-defined symbols.
    """
    from keras_transformer.data.special_ids import UNK_ID  # noqa: PLC0415

    ids = [tokenizer.piece_to_id(token) for token in PLACEHOLDER_TOKENS]
    unknown = [token for token, token_id in zip(PLACEHOLDER_TOKENS, ids) if token_id == UNK_ID]
    if unknown:
        raise ValueError(
            f"the tokenizer has no piece for {len(unknown)} placeholder token(s) ({unknown[0]} ...): train it with "
            "user_defined_symbols including keras_transformer.data.placeholders.PLACEHOLDER_TOKENS."
        )
    return ids


def raw_placeholder_ids(tokenizer) -> list[int]:
    """Ids of the pieces of `tokenizer` that are whole format placeholders (`%s`, `%1`, `{0}`, ... as
    :func:`find_placeholders` sees them): after protection a source holds none, so a translation needs none."""
    from keras_transformer.data.special_ids import UNK_ID  # noqa: PLC0415

    ids = []
    for token_id, piece in enumerate(tokenizer.id_to_piece):
        text = piece.replace("\u2581", " ").strip()
        if token_id != UNK_ID and text and find_placeholders(text) == [text]:
            ids.append(token_id)
    return ids


def allowed_token_mask(placeholder_ids, placeholder_counts, vocab_size: int):
    """Which target tokens a source's decoding may emit: all but the placeholder tokens it has no placeholder for.

    Compute it once per batch, before the decode loop, and apply it to every step's logits with
    :func:`mask_logits` (for beam search, repeat its rows ``beam_size`` times like the other per-source state).

    Args:
        placeholder_ids: Ids of ``⦅1⦆``, ``⦅2⦆``, ... in the target vocabulary (:func:`placeholder_token_ids`):
            a Python list (checked) or an int tensor ``[K]``.
        placeholder_counts: Int ``[batch]``: each source's number of protected placeholders
            (``placeholders.row_lengths()`` of :func:`tf_protect`, or ``len(placeholders)`` per :func:`protect`).
        vocab_size: Target vocabulary size.

    Returns:
        Boolean ``[batch, vocab_size]``; ``True`` = may be emitted (the package's mask convention).
    """
    import tensorflow as tf  # noqa: PLC0415

    if not isinstance(placeholder_ids, (tf.Tensor, tf.Variable)):
        placeholder_ids = [int(token_id) for token_id in placeholder_ids]
        bad = [token_id for token_id in placeholder_ids if not 0 <= token_id < vocab_size]
        if bad:
            raise ValueError(f"placeholder_ids must lie in [0, vocab_size={vocab_size}), got {bad}")
        if len(set(placeholder_ids)) != len(placeholder_ids):
            raise ValueError(f"placeholder_ids must be distinct, got {placeholder_ids}")
    placeholder_ids = tf.convert_to_tensor(placeholder_ids, dtype=tf.int32)
    counts = tf.cast(tf.convert_to_tensor(placeholder_counts), tf.int32)
    if counts.shape.rank is not None and counts.shape.rank != 1:
        raise ValueError(f"placeholder_counts must be a vector [batch], got shape {counts.shape}")
    slots = tf.range(tf.shape(placeholder_ids)[0])
    forbidden = tf.cast(slots[tf.newaxis, :] >= counts[:, tf.newaxis], tf.float32)  # [batch, K]
    # [batch, K] x [K, vocab]: a sum of at most K ones, exact in float32.
    hits = tf.matmul(forbidden, tf.one_hot(placeholder_ids, vocab_size, dtype=tf.float32))
    return tf.equal(hits, 0.0)


def mask_logits(logits, allowed):
    """``logits`` ``[batch, vocab]`` with the tokens ``allowed`` forbids set to the dtype's lowest value (safe in
    float16 / bfloat16, unlike adding a literal -1e9)."""
    import tensorflow as tf  # noqa: PLC0415

    return tf.where(allowed, logits, tf.constant(logits.dtype.min, dtype=logits.dtype))
