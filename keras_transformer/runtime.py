"""Process-wide TensorFlow runtime settings that the library chooses for speed, in one place.

TensorFlow reads these from environment variables once per process, when it first lists devices or optimizes a
graph; so they are set here, before that, by the commands that need them. Nothing here imports TensorFlow.
A variable the user has set already is never overridden.
"""

from __future__ import annotations

import os

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
