"""Data: parallel corpora, the subword tokenizer and the tf.data input pipeline.

* :mod:`~keras_transformer.data.corpus`: reading TSV/CSV and the bundled ko-en corpus (plain Python).
* :mod:`~keras_transformer.data.tokenizer`: :class:`SubwordTokenizer` (SentencePiece, in-graph via tensorflow_text).
* :mod:`~keras_transformer.data.pipeline`: :func:`make_dataset`, the bucketed tf.data training pipeline.
* :mod:`~keras_transformer.data.special_ids`: ``PAD_ID=0, UNK_ID=1, START_ID=2, END_ID=3``.

Names are imported on first use, like the top-level package: reading a corpus or the special ids does not
import TensorFlow.
"""

from keras_transformer.lazy_imports import lazy_attributes

_EXPORTS = {
    "BUNDLED_DIRECTIONS": "keras_transformer.data.corpus",
    "BUNDLED_SPLITS": "keras_transformer.data.corpus",
    "CorpusError": "keras_transformer.data.corpus",
    "CorpusWarning": "keras_transformer.data.corpus",
    "ParallelCorpus": "keras_transformer.data.corpus",
    "bundled_corpus_dir": "keras_transformer.data.corpus",
    "load_bundled_corpus": "keras_transformer.data.corpus",
    "load_tfds": "keras_transformer.data.corpus",
    "normalize_text": "keras_transformer.data.corpus",
    "read_parallel_file": "keras_transformer.data.corpus",
    "PAD_ID": "keras_transformer.data.special_ids",
    "UNK_ID": "keras_transformer.data.special_ids",
    "START_ID": "keras_transformer.data.special_ids",
    "END_ID": "keras_transformer.data.special_ids",
    "DEFAULT_USER_DEFINED_SYMBOLS": "keras_transformer.data.tokenizer",
    "SubwordTokenizer": "keras_transformer.data.tokenizer",
    "PipelineStats": "keras_transformer.data.pipeline",
    "default_bucket_boundaries": "keras_transformer.data.pipeline",
    "make_dataset": "keras_transformer.data.pipeline",
    "padding_share": "keras_transformer.data.pipeline",
}
_SUBMODULES = {"corpus", "pipeline", "special_ids", "tokenizer"}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _EXPORTS, _SUBMODULES)
