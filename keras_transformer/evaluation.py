"""BLEU and chrF with sacrebleu (default 13a tokenization, cased), on any parallel corpus."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from keras_transformer.data.placeholders import placeholder_agreement


def corpus_scores(hypotheses, references) -> dict:
    """`{"bleu": ..., "chrf": ..., "bleu_signature": ...}` for lists of strings (one reference each)."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references: they must pair up.")
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    return {
        "bleu": round(bleu_score.score, 2),
        "chrf": round(chrf.corpus_score(hypotheses, [references]).score, 2),
        "bleu_case_insensitive": round(sacrebleu.metrics.BLEU(lowercase=True).corpus_score(hypotheses, [references]).score, 2),
        "bleu_signature": str(bleu.get_signature()),
    }


def evaluate(translator, corpus, out_dir=None, batch_size=64, decoding=None, **decoding_options) -> dict:
    """Translates `corpus.sources` (with `decoding` and its options, see `Translator.translate`), scores against
    `corpus.targets`; with `out_dir`, writes `hypotheses.txt` (one line per source) and `report.json`, each
    atomically. Returns the report."""
    from keras_transformer.decoding.decodings import choose_decoding

    decoding, decoding_options = choose_decoding(decoding, decoding_options)
    warn_if_columns_look_swapped(translator, corpus.sources)
    started = time.time()
    hypotheses = translator.translate(corpus.sources, decoding=decoding, batch_size=batch_size, **decoding_options)
    seconds = time.time() - started
    report = {
        "corpus": str(getattr(corpus, "path", "")),
        "sentences": len(hypotheses),
        "decoding": {"name": decoding, **decoding_options},
        "decode_precision": getattr(translator, "decode_precision", None),
        **corpus_scores(hypotheses, corpus.targets),
        # Sentences whose translation keeps exactly the source's format placeholders (and, as the ceiling, how
        # often the reference does).
        "placeholders": placeholder_agreement(corpus.sources, hypotheses, corpus.targets),
        "decode_seconds": round(seconds, 1),
        "sentences_per_second": round(len(hypotheses) / max(seconds, 1e-9), 1),
        "examples": [
            {"source": s, "reference": r, "hypothesis": h}
            for s, r, h in list(zip(corpus.sources, corpus.targets, hypotheses))[:5]
        ],
    }
    if out_dir is not None:
        from keras_transformer.files import atomic_write, atomic_write_json

        out_dir = Path(out_dir)
        atomic_write(out_dir / "hypotheses.txt", "".join(h.replace("\n", " ") + "\n" for h in hypotheses))
        atomic_write_json(out_dir / "report.json", report)
    return report


def source_coverage(tokenizer, texts, sample=200) -> float:
    """Share of the first `sample` texts' pieces that are real vocabulary pieces (not `<unk>` or UTF-8 byte pieces):
    near 1 for text in the tokenizer's language, low for text in another script."""
    from keras_transformer.data.special_ids import UNK_ID

    pieces = tokenizer.id_to_piece
    total = known = 0
    for text in list(texts)[:sample]:
        for token in tokenizer.encode(text):
            total += 1
            known += token != UNK_ID and not (pieces[token].startswith("<0x") and pieces[token].endswith(">"))
    return known / total if total else 1.0


def warn_if_columns_look_swapped(translator, sources, threshold=0.5):
    """Warns when most source pieces are unknown or byte pieces: the file's columns are probably the wrong way
    round for this model (--source-column / --target-column)."""
    if translator.source_tokenizer is None:
        return
    coverage = source_coverage(translator.source_tokenizer, sources)
    if coverage < threshold:
        warnings.warn(
            f"Only {coverage:.0%} of the source pieces are in the model's source vocabulary (the rest are unknown "
            "or byte pieces): the source text may be in the wrong language for this model. If the file's columns "
            "are swapped, pass --source-column / --target-column.",
            stacklevel=2,
        )
