"""Process-wide TensorFlow runtime settings that the library chooses for speed, in one place, and what the CPU
offers (`cpu_info`), which those choices depend on.

TensorFlow reads these from environment variables once per process, when it first lists devices or optimizes a
graph; so they are set here, before that, by the commands that need them. Nothing here imports TensorFlow.
A variable the user has set already is never overridden.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def cpu_info(text=None) -> dict | None:
    """This machine's CPU from /proc/cpuinfo (or from `text`, its contents): `vendor_id`, `model_name` and `flags`
    (a frozenset: `amx_bf16`, `avx512_vnni`, ...; empty where the file has no flags line) of the first processor.
    None where there is no /proc/cpuinfo (not Linux)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return {"vendor_id": fields.get("vendor_id", ""), "model_name": fields.get("model name", ""),
            "flags": frozenset(fields.get("flags", "").split())}

# XLA auto-clustering restricted to element-wise/reduction ("fusible") ops; see TrainingConfig.xla_fusion.
XLA_FUSION_FLAGS = "--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit --tf_xla_ops_to_cluster=FUSIBLE"


def enable_xla_fusion(settings) -> bool:
    """Asks TensorFlow to fuse element-wise ops with XLA (TrainingConfig.xla_fusion) by adding `XLA_FUSION_FLAGS` to
    `TF_XLA_FLAGS`. TensorFlow reads those flags once per process, when it first lists devices or optimizes a
    graph: call this before creating a strategy or running any `tf.function`. Returns False, changing nothing, when
    the settings do not ask for it (or XLA-compile the whole step) and where `TF_XLA_FLAGS` already chooses
    auto-clustering (the user's own setting wins)."""
    current = os.environ.get("TF_XLA_FLAGS", "")
    if not settings.xla_fusion or settings.jit_compile or "tf_xla_auto_jit" in current or "tf_xla_ops_to_cluster" in current:
        return False
    os.environ["TF_XLA_FLAGS"] = f"{current} {XLA_FUSION_FLAGS}".strip()
    return True


# Lines that TensorFlow, XLA, absl and SentencePiece print from C++ straight to the process's stderr (file
# descriptor 2), where Python's logging settings cannot reach them: absl's "I0000 00:00:... file.cc:12] ..." format,
# absl's notice that it was not initialised, the CPU-feature notice, and SentencePiece's normaliser notice.
NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:.]+ +\d+ [^ ]+:\d+\] |WARNING: All log messages before absl::InitializeLog\(\)"
    rb"|To enable the following instructions: |normalizer\.cc\(\d+\) LOG\(INFO\) )"
)


def hide_native_logs(pattern=NATIVE_LOG_LINE):
    """Filters file descriptor 2 so that TensorFlow's native start-up noise (`oneDNN custom operations are on`,
    `cuInit` errors on a machine without a GPU, ...) is not printed, while every other line (Python warnings, our
    `error:` lines, tracebacks) passes unchanged. A thread copies the lines from a pipe to the real stderr; at exit
    the real stderr is put back and the thread drains the pipe. The command line calls this unless `--verbose`."""
    import atexit
    import sys
    import threading

    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    out_fd = os.dup(real)  # the thread's own copy, so that restore() may close `real` at any time

    def copy_lines():
        with os.fdopen(read_end, "rb") as pipe, os.fdopen(out_fd, "wb", buffering=0) as out:
            for line in pipe:
                if not pattern.match(line):
                    out.write(line)

    thread = threading.Thread(target=copy_lines, name="keras-transformer-stderr", daemon=True)
    thread.start()

    def restore():
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end: the thread reads to the end and stops
        os.close(real)
        thread.join(timeout=5)

    atexit.register(restore)
