import gzip
import subprocess
import sys
import types
import unicodedata
import warnings
from pathlib import Path

import pytest

from keras_transformer.data.corpus import (
    CorpusError,
    CorpusWarning,
    ParallelCorpus,
    load_bundled_corpus,
    load_tfds,
    normalize_text,
    read_parallel_file,
)


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_normalize_text_keeps_case_hangul_and_placeholders():
    decomposed = unicodedata.normalize("NFD", "한국어 café")
    assert decomposed != "한국어 café"
    assert normalize_text(f"  {decomposed}\t \u00a0Save %s  {{0}} %(name)s  ") == (
        "한국어 café Save %s {0} %(name)s"
    )
    assert normalize_text("어제 카페 갔었어 거기 사람 많더라") == "어제 카페 갔었어 거기 사람 많더라"


def test_read_tsv(tmp_path):
    path = write(tmp_path / "pairs.tsv", "Open  File\t파일  열기\r\n\nSave %s\t%s 저장\n\n")
    corpus = read_parallel_file(path)
    assert isinstance(corpus, ParallelCorpus)
    assert corpus.sources == ["Open File", "Save %s"]
    assert corpus.targets == ["파일 열기", "%s 저장"]
    assert corpus.skipped == 0 and corpus.path == path and len(corpus) == 2
    assert list(corpus) == [("Open File", "파일 열기"), ("Save %s", "%s 저장")]
    swapped = read_parallel_file(path, source_column=1, target_column=0)
    assert swapped.sources == corpus.targets and swapped.targets == corpus.sources


def test_read_gzip_and_csv(tmp_path):
    gz = tmp_path / "pairs.tsv.gz"
    gz.write_bytes(gzip.compress("a\tㄱ\nb\tㄴ\n".encode()))
    assert read_parallel_file(gz).targets == ["ㄱ", "ㄴ"]

    text = 'id,en,ko\n1,"Hello, world","안녕, ""세상"""\n2,Quit,끝내기\n'
    csv_path = write(tmp_path / "pairs.csv", text)
    corpus = read_parallel_file(csv_path, source_column=1, target_column=2)
    assert corpus.sources == ["en", "Hello, world", "Quit"]
    assert corpus.targets == ["ko", '안녕, "세상"', "끝내기"]
    csv_gz = tmp_path / "pairs.csv.gz"
    csv_gz.write_bytes(gzip.compress(text.encode()))
    assert read_parallel_file(csv_gz, 1, 2).targets == corpus.targets
    # an explicit delimiter on a .tsv-named file
    semi = write(tmp_path / "pairs.txt", "a;b\nc;d\n")
    assert read_parallel_file(semi, delimiter=";").targets == ["b", "d"]


def test_malformed_lines_skipped_with_one_warning(tmp_path):
    lines = ["ok\t좋아", "no tab here", "\t빈 소스", "empty target\t  ", "fine\t괜찮아", "x", "y", "z", "w"]
    path = write(tmp_path / "bad.tsv", "\n".join(lines) + "\n")
    with pytest.warns(CorpusWarning) as record:
        corpus = read_parallel_file(path)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 7" in message and "2, 3, 4, 6, 7" in message and "(2 more)" in message
    assert corpus.sources == ["ok", "fine"] and corpus.skipped == 7

    with pytest.raises(CorpusError, match=r"line 2 has no a tab"):
        read_parallel_file(path, strict=True)


def test_clean_file_gives_no_warning(tmp_path):
    path = write(tmp_path / "good.tsv", "a\tb\n\n\nc\td")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_parallel_file(path).sources == ["a", "c"]


@pytest.mark.parametrize(
    ("content", "kwargs", "pattern"),
    [
        (None, {}, r"no such file"),
        ("", {}, r"file is empty"),
        ("  \n\n", {}, r"file is empty"),
        ("just text\nmore text\n", {}, r"no usable pairs.*line 1 has no a tab"),
        ("a\tb\nc\td\n", {"target_column": 3}, r"column index out of range.*at most 2 columns"),
        ("a\tb\n", {"source_column": -1}, r"0-based"),
        ("a\tb\n", {"source_column": 1, "target_column": 1}, r"must differ"),
    ],
)
def test_errors(tmp_path, content, kwargs, pattern):
    path = tmp_path / "data.tsv"
    if content is not None:
        write(path, content)
    with pytest.raises(CorpusError, match=pattern):
        read_parallel_file(path, **kwargs)


def test_non_utf8_reports_line(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("a\tb\nc\td\ncafé\tx\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"line 3 is not valid UTF-8"):
        read_parallel_file(path)
    assert issubclass(CorpusError, ValueError)


def test_bad_gzip(tmp_path):
    path = write(tmp_path / "data.tsv.gz", "a\tb\n")
    with pytest.raises(CorpusError, match="gzip"):
        read_parallel_file(path)


def test_bundled_dev_test_and_directions():
    dev = load_bundled_corpus("dev")
    assert len(dev) == 1000 and dev.skipped == 0
    assert any("\uac00" <= ch <= "\ud7a3" for ch in dev.sources[0])  # Korean source
    assert dev.targets[1] == "(%1 unread articles)"
    en_ko = load_bundled_corpus("dev", direction="en-ko")
    assert en_ko.sources == dev.targets and en_ko.targets == dev.sources
    assert len(load_bundled_corpus("test")) == 2000


def test_bundled_train():
    train = load_bundled_corpus("train")
    assert len(train) == 241_224 and train.skipped == 0
    assert str(train.path).endswith("train.tsv.gz")


def test_bundled_bad_arguments():
    with pytest.raises(ValueError, match="train, dev, test"):
        load_bundled_corpus("validation")
    with pytest.raises(ValueError, match="ko-en, en-ko"):
        load_bundled_corpus("dev", direction="ko-ja")


def test_sample_head_swapped():
    corpus = ParallelCorpus([str(i) for i in range(100)], [f"t{i}" for i in range(100)])
    sample = corpus.sample(10, seed=3)
    assert len(sample) == 10 and sample.sources == corpus.sample(10, seed=3).sources
    assert all(t == "t" + s for s, t in sample)
    assert corpus.head(2).targets == ["t0", "t1"]
    assert corpus.swapped().sources[0] == "t0"
    with pytest.raises(ValueError):
        ParallelCorpus(["a"], [])


def test_load_tfds_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
    with pytest.raises(CorpusError, match=r"not installed.*tfds build ted_hrlr_translate/pt_to_en"):
        load_tfds()


def _fake_tfds(prepared, calls):
    module = types.ModuleType("tensorflow_datasets")

    class Builder:
        info = types.SimpleNamespace(supervised_keys=("pt", "en"))
        data_dir = "/nonexistent"

        def is_prepared(self):
            return prepared

    def builder(name, data_dir=None):
        calls.append(("builder", name, data_dir))
        return Builder()

    def load(name, **kwargs):
        calls.append(("load", name, kwargs))
        return [(b"ol\xc3\xa1  mundo", b"hello world"), (b"", b"dropped")]

    module.builder = builder
    module.load = load
    module.as_numpy = lambda dataset: dataset
    return module


def test_load_tfds_not_prepared(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", _fake_tfds(False, calls))
    with pytest.raises(CorpusError, match=r"not prepared.*tfds build"):
        load_tfds(data_dir=tmp_path)
    assert [c[0] for c in calls] == ["builder"]  # never reached load()/download


def test_load_tfds_prepared(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", _fake_tfds(True, calls))
    corpus = load_tfds("ted_hrlr_translate/pt_to_en", split="validation", data_dir="/data")
    assert corpus.sources == ["olá mundo"] and corpus.targets == ["hello world"]
    assert corpus.skipped == 1
    load_call = calls[-1]
    assert load_call[0] == "load"
    assert load_call[2]["download"] is False and load_call[2]["split"] == "validation"
    assert load_call[2]["data_dir"] == "/data"


def test_corpus_import_does_not_pull_in_tensorflow():
    code = (
        "import sys\n"
        "from keras_transformer.data import load_bundled_corpus, CorpusError, PAD_ID\n"
        "assert len(load_bundled_corpus('dev')) == 1000\n"
        "assert 'tensorflow' not in sys.modules, 'corpus reading imported TensorFlow'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr[-2000:]
