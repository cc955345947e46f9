"""Writing files so that a kill, a full disk or a missing permission never leaves a half-written file behind.

Every file of a run directory or an export is written to a unique temporary name in the same folder and then
moved into place with `os.replace`, which is atomic on POSIX: a reader sees the old file or the new one, never a
part of one. On an `OSError` (disk full, permission denied) the temporary file is removed and the error is raised
as `FileWriteError`, whose message names the path, so that the command line prints one `error:` line.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


class FileWriteError(OSError):
    """A file could not be written (disk full, permission denied, ...); the message names the path."""


def _describe(error: OSError, path) -> str:
    reason = error.strerror or str(error)
    return f"could not write {path}: {reason}. Nothing was left half-written; free space or fix the permissions and try again."


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yields a temporary path beside `path` (same folder, so the final rename stays on one file system); when the
    block ends without an error, the temporary file or folder becomes `path`. Anything left at the temporary path
    after an error is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp" + "".join(path.suffixes), dir=path.parent)
        os.close(fd)
        os.unlink(tmp)  # the writer creates it (some writers, e.g. Keras' model.save, refuse an existing file)
    except OSError as error:
        raise FileWriteError(_describe(error, path)) from error
    tmp = Path(tmp)
    try:
        yield tmp
        fault_point(f"replace:{path.name}")
        os.replace(tmp, path)
    except OSError as error:
        _remove(tmp)
        raise FileWriteError(_describe(error, path)) from error
    except BaseException:
        _remove(tmp)
        raise


def atomic_write(path, data: bytes | str) -> Path:
    """Writes `data` (bytes, or str as UTF-8) to `path` atomically, flushed to disk first."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def atomic_write_json(path, value) -> Path:
    """`value` as indented UTF-8 JSON, written atomically."""
    return atomic_write(path, json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


FAULT_ENVIRONMENT_VARIABLE = "KERAS_TRANSFORMER_FAULT"
_fault_hits: dict = {}


def fault_point(name: str):
    """A named place where the kill-safety tests stop this process with SIGKILL, as a power cut would.

    `KERAS_TRANSFORMER_FAULT=<name>:<n>` kills the process the n-th time it reaches `<name>` (`replace:<file name>`
    just before a file is moved into place, `dev_bleu` inside the dev-BLEU pass, `batch` after a training step).
    Unset, as always outside those tests, it costs one dictionary lookup."""
    wanted = os.environ.get(FAULT_ENVIRONMENT_VARIABLE)
    if not wanted:
        return
    target, _, count = wanted.rpartition(":")
    if target != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] >= int(count or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
