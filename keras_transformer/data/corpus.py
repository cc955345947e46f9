"""Reading parallel (source, target) text corpora.

Everything here is plain Python: importing this module does not import
TensorFlow, so reading a corpus is cheap.

* :func:`read_parallel_file` reads a TSV or CSV file (optionally gzip
  compressed) into a :class:`ParallelCorpus`.
* :func:`load_bundled_corpus` reads the Korean-English corpus that ships with
  the package (``keras_transformer/data/corpus/ko-en``).
* :func:`load_tfds` reads a TensorFlow Datasets translation set, but only if
  ``tensorflow_datasets`` is installed *and* the data is already prepared on
  disk; it never downloads anything.

Text is normalised with :func:`normalize_text`: Unicode NFC and whitespace
collapsing. Nothing else -- no lowercasing, no accent stripping, so Hangul and
format placeholders such as ``%s``, ``%1``, ``{0}``, ``%(name)s`` are kept
exactly as written.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import io
import os
import random
import unicodedata
import warnings
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

__all__ = [
    "BUNDLED_DIRECTIONS",
    "BUNDLED_SPLITS",
    "CorpusError",
    "CorpusWarning",
    "ParallelCorpus",
    "bundled_corpus_dir",
    "load_bundled_corpus",
    "load_tfds",
    "normalize_text",
    "read_parallel_file",
]

BUNDLED_SPLITS = ("train", "dev", "test")
BUNDLED_DIRECTIONS = ("ko-en", "en-ko")
_BUNDLED_FILES = {"train": "train.tsv.gz", "dev": "dev.tsv", "test": "test.tsv"}
# Column of each language in the bundled files (``english<TAB>korean``).
_BUNDLED_COLUMNS = {"en": 0, "ko": 1}

# How many offending line numbers a warning / error message lists.
_MAX_LINES_REPORTED = 5


class CorpusError(ValueError):
    """A corpus file (or data set) cannot be read; the message says how to fix it."""


class CorpusWarning(UserWarning):
    """Some lines of a corpus file were skipped."""


@dataclasses.dataclass
class ParallelCorpus:
    """Aligned source and target sentences.

    Attributes:
        sources: Source sentences (normalised).
        targets: Target sentences (normalised), ``targets[i]`` translates
            ``sources[i]``.
        skipped: Number of non-blank lines that were skipped because they were
            malformed (no delimiter, missing column, empty side).
        path: Where the data came from (a file path, or a description such as
            ``"tfds:ted_hrlr_translate/pt_to_en[train]"``).
    """

    sources: list[str]
    targets: list[str]
    skipped: int = 0
    path: Path | str | None = None

    def __post_init__(self):
        if len(self.sources) != len(self.targets):
            raise ValueError(
                f"sources and targets must have the same length, got {len(self.sources)} "
                f"and {len(self.targets)}"
            )

    def __len__(self) -> int:
        return len(self.sources)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(zip(self.sources, self.targets))

    def __getitem__(self, index: int) -> tuple[str, str]:
        return self.sources[index], self.targets[index]

    def head(self, n: int) -> "ParallelCorpus":
        """The first ``n`` pairs, as a new corpus."""
        return dataclasses.replace(self, sources=self.sources[:n], targets=self.targets[:n])

    def sample(self, n: int, seed: int = 0) -> "ParallelCorpus":
        """``n`` pairs drawn without replacement (deterministic for a given seed).

        The pairs keep their original order. If ``n >= len(self)`` all pairs are returned.
        """
        if n >= len(self):
            return dataclasses.replace(self, sources=list(self.sources), targets=list(self.targets))
        indices = sorted(random.Random(seed).sample(range(len(self)), n))
        return dataclasses.replace(
            self,
            sources=[self.sources[i] for i in indices],
            targets=[self.targets[i] for i in indices],
        )

    def swapped(self) -> "ParallelCorpus":
        """The same pairs with source and target exchanged."""
        return dataclasses.replace(self, sources=self.targets, targets=self.sources)


def normalize_text(text: str) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, ends stripped.

    Case, accents and punctuation are left alone (Hangul syllables are NFC
    already and come out unchanged).
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


def _describe_lines(line_numbers: Sequence[int], total: int) -> str:
    shown = ", ".join(str(n) for n in line_numbers[:_MAX_LINES_REPORTED])
    more = f", ... ({total - _MAX_LINES_REPORTED} more)" if total > _MAX_LINES_REPORTED else ""
    return shown + more


def _read_text(path: Path) -> str:
    """Whole file as text; gzip by extension; strict UTF-8 with a line number on failure."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except (gzip.BadGzipFile, EOFError) as error:
        raise CorpusError(
            f"{path}: cannot decompress ({error}). The name ends in '.gz' but the file is "
            "not complete gzip data; rename it without '.gz' if it is plain text, or "
            "re-create it with `gzip`."
        ) from error
    except OSError as error:
        raise CorpusError(f"{path}: cannot read the file ({error}).") from error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise CorpusError(
            f"{path}: line {line} is not valid UTF-8 (byte {raw[error.start]:#04x} at "
            f"offset {error.start}). Corpus files must be UTF-8; convert the file, e.g. "
            f"`iconv -f <its-encoding> -t UTF-8 {path.name} > fixed{''.join(path.suffixes)}`, "
            "or fix/remove that line."
        ) from None
    if text.startswith("\ufeff"):  # a UTF-8 byte order mark is harmless; drop it
        text = text[1:]
    return text


def _iter_rows(text: str, delimiter: str, use_csv: bool) -> Iterator[tuple[int, list[str] | None]]:
    """Yields ``(line_number, fields)``; ``fields`` is None for a line without the delimiter."""
    if use_csv:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        start = 1
        for row in reader:
            line_number = start
            start = reader.line_num + 1
            if not row or all(not field.strip() for field in row):
                yield line_number, []
            elif len(row) == 1:
                yield line_number, None
            else:
                yield line_number, row
        return
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    for index, line in enumerate(lines):
        line = line.removesuffix("\r")
        if not line.strip():
            yield index + 1, []
        elif delimiter not in line:
            yield index + 1, None
        else:
            yield index + 1, line.split(delimiter)


def read_parallel_file(
    path: str | os.PathLike,
    source_column: int = 0,
    target_column: int = 1,
    delimiter: str | None = None,
    strict: bool = False,
) -> ParallelCorpus:
    """Reads a parallel corpus from a TSV or CSV file.

    The format follows the file name: ``*.csv`` (or ``*.csv.gz``) is parsed with
    the :mod:`csv` module (quoting understood) and ``,`` as default delimiter;
    anything else is split on tabs. A ``.gz`` suffix means gzip compression.
    The file must be UTF-8 (a byte order mark is allowed). Text is normalised
    with :func:`normalize_text`.

    Blank lines are ignored. Lines without the delimiter, with too few columns,
    or whose source or target is empty after normalisation are skipped, counted
    in ``ParallelCorpus.skipped`` and reported in a single
    :class:`CorpusWarning` -- or, with ``strict=True``, the first of them raises
    :class:`CorpusError`.

    Args:
        path: File to read.
        source_column: 0-based column holding the source sentence.
        target_column: 0-based column holding the target sentence.
        delimiter: Column separator; ``None`` picks ``,`` for CSV and tab otherwise.
        strict: Raise on the first malformed line instead of skipping it.

    Raises:
        CorpusError: The file is missing, empty, not UTF-8, has no usable pairs,
            or a column index does not exist in the file.
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError(
            f"{path}: no such file. Check the path (relative paths are resolved from "
            f"{Path.cwd()}); the bundled corpus is read with load_bundled_corpus()."
        )
    if path.is_dir():
        raise CorpusError(f"{path} is a directory; pass the path of a .tsv/.csv(.gz) file.")
    if source_column < 0 or target_column < 0:
        raise CorpusError(
            f"column indices are 0-based and must be >= 0, got source_column={source_column}, "
            f"target_column={target_column}."
        )
    if source_column == target_column:
        raise CorpusError(
            f"source_column and target_column are both {source_column}; they must differ."
        )

    base_suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    use_csv = base_suffix.lower() == ".csv"
    if delimiter is None:
        delimiter = "," if use_csv else "\t"
    if not delimiter or (use_csv and len(delimiter) != 1):
        raise CorpusError(
            f"delimiter must be a non-empty string (one character for CSV files), got {delimiter!r}."
        )
    delimiter_name = {"\t": "a tab", ",": "a comma"}.get(delimiter, repr(delimiter))

    text = _read_text(path)
    if not text.strip():
        raise CorpusError(
            f"{path}: the file is empty. Expected one pair per line, source and target "
            f"separated by {delimiter_name}."
        )

    rows = list(_iter_rows(text, delimiter, use_csv))
    needed = max(source_column, target_column) + 1
    num_columns = max((len(fields) for _, fields in rows if fields), default=0)
    if num_columns and num_columns < needed:
        raise CorpusError(
            f"{path}: column index out of range: source_column={source_column}, "
            f"target_column={target_column}, but the file has at most {num_columns} "
            f"columns (valid indices 0..{num_columns - 1}) when split on {delimiter_name}."
            + ("" if delimiter == "\t" else " Is the delimiter right?")
        )

    sources: list[str] = []
    targets: list[str] = []
    bad_lines: list[int] = []
    first_problem = ""
    for line_number, fields in rows:
        if fields is not None and not fields:
            continue  # blank line
        if fields is None:
            problem = f"has no {delimiter_name} separating source and target"
        elif len(fields) < needed:
            problem = f"has {len(fields)} columns but column {needed - 1} is needed"
        else:
            source = normalize_text(fields[source_column])
            target = normalize_text(fields[target_column])
            if source and target:
                sources.append(source)
                targets.append(target)
                continue
            problem = f"has an empty {'source' if not source else 'target'}"
        if strict:
            raise CorpusError(
                f"{path}: line {line_number} {problem}. Fix or remove that line, or pass "
                "strict=False to skip malformed lines with a warning."
            )
        if not bad_lines:
            first_problem = problem
        bad_lines.append(line_number)

    if not sources:
        raise CorpusError(
            f"{path}: no usable pairs: all {len(bad_lines)} non-blank lines are malformed "
            f"(line {bad_lines[0]} {first_problem}). Expected one pair per line, "
            f"source and target separated by {delimiter_name}"
            + ("; for a CSV file use the extension .csv." if not use_csv else ".")
        )
    if bad_lines:
        warnings.warn(
            f"{path}: skipped {len(bad_lines)} malformed line(s) (no {delimiter_name}, too few "
            f"columns or an empty side), e.g. line(s) {_describe_lines(bad_lines, len(bad_lines))}; "
            f"line {bad_lines[0]} {first_problem}. Pass strict=True to raise instead.",
            CorpusWarning,
            stacklevel=2,
        )
    return ParallelCorpus(sources=sources, targets=targets, skipped=len(bad_lines), path=path)


def bundled_corpus_dir() -> Path:
    """Directory holding the bundled ko-en corpus (its README.md and PACKAGES.tsv too)."""
    try:
        root = resources.files(__package__ or "keras_transformer.data")
        candidate = Path(str(root.joinpath("corpus", "ko-en")))
        if candidate.is_dir():
            return candidate
    except (ModuleNotFoundError, TypeError, ValueError):  # pragma: no cover - unusual loaders
        pass
    return Path(__file__).resolve().parent / "corpus" / "ko-en"


def load_bundled_corpus(split: str, direction: str = "ko-en") -> ParallelCorpus:
    """Reads a split of the bundled Korean-English corpus.

    Args:
        split: ``"train"`` (241,224 pairs), ``"dev"`` (1,000) or ``"test"`` (2,000).
        direction: ``"ko-en"``: sources are Korean, targets English;
            ``"en-ko"``: the reverse.

    Raises:
        ValueError: Unknown split or direction.
        CorpusError: The data files are missing (e.g. a package install that did
            not include package data).
    """
    if split not in _BUNDLED_FILES:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(BUNDLED_SPLITS)}")
    if direction not in BUNDLED_DIRECTIONS:
        raise ValueError(
            f"unknown direction {direction!r}; valid directions: {', '.join(BUNDLED_DIRECTIONS)}"
        )
    source_language, target_language = direction.split("-")
    path = bundled_corpus_dir() / _BUNDLED_FILES[split]
    if not path.exists():
        raise CorpusError(
            f"bundled corpus file {path} is missing; the package was installed without its "
            "data files. Reinstall from a source checkout (`pip install .`), which includes "
            "keras_transformer/data/corpus/ko-en/*."
        )
    sources, targets = _read_bundled(path, _BUNDLED_COLUMNS[source_language], _BUNDLED_COLUMNS[target_language])
    return ParallelCorpus(list(sources), list(targets), path=path)


@functools.lru_cache(maxsize=8)
def _read_bundled(path, source_column, target_column):
    """The pairs of a bundled file, read once per process (the train split takes seconds to read) and kept as
    tuples: every caller gets its own lists."""
    corpus = read_parallel_file(path, source_column=source_column, target_column=target_column, strict=True)
    return tuple(corpus.sources), tuple(corpus.targets)


def _tfds_help(name: str, data_dir: str | os.PathLike | None) -> str:
    where = f"--data_dir={data_dir}" if data_dir else "--data_dir=/some/dir"
    return (
        f"Prepare it on a machine with network access: `pip install tensorflow-datasets` and "
        f"`tfds build {name} {where}` (or `tfds.builder({name!r}, data_dir=...).download_and_prepare()`), "
        f"copy that directory here and pass data_dir=<that directory> to load_tfds(). "
        "load_tfds() never downloads. Alternatively export the pairs to a TSV file and use "
        "read_parallel_file()."
    )


def load_tfds(
    name: str = "ted_hrlr_translate/pt_to_en",
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
) -> ParallelCorpus:
    """Reads a TensorFlow Datasets translation set that is already prepared on disk.

    ``tensorflow_datasets`` is optional (not a dependency of this package). The
    data must already have been built into ``data_dir`` (or the TFDS default
    directory); this function never downloads and fails fast otherwise. Pairs
    come from the data set's supervised keys ``(source, target)``.

    Raises:
        CorpusError: ``tensorflow_datasets`` is not installed, the data set is
            unknown or not prepared, or it has no supervised (source, target) keys.
    """
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415 - optional dependency
    except ImportError as error:
        raise CorpusError(
            f"cannot load TFDS data set {name!r}: tensorflow_datasets is not installed (it is "
            f"optional and not a dependency of keras_transformer). {_tfds_help(name, data_dir)}"
        ) from error
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # DatasetNotFoundError and friends
        raise CorpusError(f"TFDS cannot find data set {name!r}: {error}") from error

    is_prepared = getattr(builder, "is_prepared", None)
    if callable(is_prepared):
        prepared = bool(is_prepared())
    else:  # older TFDS: look for the metadata a finished build writes
        prepared = os.path.exists(os.path.join(os.fspath(builder.data_dir), "dataset_info.json"))
    if not prepared:
        raise CorpusError(
            f"TFDS data set {name!r} is not prepared in "
            f"{data_dir or 'the default TFDS data directory'}. {_tfds_help(name, data_dir)}"
        )
    keys = getattr(builder.info, "supervised_keys", None)
    if not keys or len(keys) < 2:
        raise CorpusError(
            f"TFDS data set {name!r} has no supervised (source, target) keys; it is not a "
            "translation data set that load_tfds() can read."
        )
    try:
        dataset = tfds.load(
            name, split=split, data_dir=data_dir, download=False, as_supervised=True
        )
    except Exception as error:
        raise CorpusError(f"cannot read split {split!r} of TFDS data set {name!r}: {error}") from error

    sources: list[str] = []
    targets: list[str] = []
    skipped = 0
    for source, target in tfds.as_numpy(dataset):
        source = normalize_text(source.decode("utf-8") if isinstance(source, bytes) else str(source))
        target = normalize_text(target.decode("utf-8") if isinstance(target, bytes) else str(target))
        if source and target:
            sources.append(source)
            targets.append(target)
        else:
            skipped += 1
    if not sources:
        raise CorpusError(f"split {split!r} of TFDS data set {name!r} holds no usable pairs.")
    return ParallelCorpus(sources=sources, targets=targets, skipped=skipped, path=f"tfds:{name}[{split}]")
