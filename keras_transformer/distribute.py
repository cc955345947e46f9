"""Data-parallel training with TensorFlow's own `tf.distribute` strategies (no home-made distribution layer).

`get_strategy(name)` returns one of:

    default       `tf.distribute.get_strategy()`: one device (the first GPU if there is one, else the CPU)
    mirrored      `tf.distribute.MirroredStrategy()`: one replica per local GPU, gradients all-reduced
                  every step (on a machine without a GPU: a single replica on the CPU)
    multi_worker  `tf.distribute.MultiWorkerMirroredStrategy()`: the machines listed in `TF_CONFIG`, each with
                  its local GPUs (or its CPU), gradients all-reduced across all of them every step
    tpu           `tf.distribute.TPUStrategy` on a Cloud TPU (`TPUClusterResolver(tpu=...)`)

Create the model, optimizer and metrics under `strategy.scope()` (`keras_transformer.training.train` does) and
call `model.fit`: Keras distributes the dataset and runs the train step on every replica.

Global and per-replica batch. The batch the dataset yields is the GLOBAL batch: `model.fit` splits every batch
along its first axis across the `strategy.num_replicas_in_sync` replicas (with several workers, each worker
takes the rows of its own replicas). Our `tokens_per_batch` is therefore global: with 4 GPUs and
`tokens_per_batch=16384`, each GPU sees about 4096 tokens per step and the step's gradient is that of all
16384 tokens. The number of updates per epoch does not change with the number of replicas; to keep each GPU
as busy as on one GPU, multiply `tokens_per_batch` by the number of replicas (fewer, larger steps: the paper
used 8 GPUs with ~25000 source + 25000 target tokens per step). Gradients are summed across replicas, so the
loss each replica returns must be its share of the global mean (see docs/distributed.md).

Only the chief (`is_chief`) should write shared files (history, best model, checkpoints); other workers must
write to their own paths (`worker_path`), or their writes race the chief's.

Call `prepare_for_fit(model, strategy, x, y)` after `model.compile` (under the scope): it builds everything
from an example batch and works around two problems of Keras 3's `fit` under a strategy (see its docstring).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")

TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
)


def get_strategy(name: str = "default", tpu: str | None = None):
    """The `tf.distribute.Strategy` called `name` (one of `STRATEGIES`); `tpu` is the TPU name or
    `grpc://` address for `name="tpu"` (None: from the environment, e.g. `TPU_NAME`; "local" on a TPU VM).

    Raises ValueError for an unknown name, a missing or malformed `TF_CONFIG` (multi_worker), or no TPU (tpu).
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}. Choose one of: {', '.join(STRATEGIES)}.")
    import tensorflow as tf

    if key == "default":
        return tf.distribute.get_strategy()
    if key == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        strategy = tf.distribute.MirroredStrategy()
        if gpus:
            logger.info("MirroredStrategy over %d GPU(s): %s", len(gpus), ", ".join(d.name for d in gpus))
        else:
            logger.warning(
                "MirroredStrategy: no GPU found, so it falls back to a single replica on the CPU "
                "(the same as --strategy default)."
            )
        return strategy
    if key == "multi_worker":
        cluster, task = read_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        workers = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
        logger.info(
            "MultiWorkerMirroredStrategy: task %s %d of %d worker(s), %d replica(s) in sync.",
            task["type"], task["index"], workers, strategy.num_replicas_in_sync,
        )
        return strategy
    return _tpu_strategy(tf, tpu)


def read_tf_config(environ=None):
    """`(cluster, task)` from the `TF_CONFIG` environment variable, checked; ValueError naming what is
    expected when it is missing or malformed."""
    environ = os.environ if environ is None else environ
    hint = f"Expected TF_CONFIG like {TF_CONFIG_EXAMPLE} (the same cluster on every worker, its own task index)."
    raw = environ.get("TF_CONFIG")
    if not raw or not raw.strip():
        raise ValueError(f"--strategy multi_worker needs the TF_CONFIG environment variable, which is not set. {hint}")
    try:
        values = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}). {hint}") from None
    if not isinstance(values, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {type(values).__name__}. {hint}")
    cluster, task = values.get("cluster"), values.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f"TF_CONFIG has no 'cluster' mapping of job names to address lists. {hint}")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise ValueError(f"TF_CONFIG cluster[{job!r}] must be a non-empty list of 'host:port' strings, got {addresses!r}. {hint}")
    if not cluster.get("worker") and not cluster.get("chief"):
        raise ValueError(f"TF_CONFIG cluster lists no 'worker' (or 'chief') addresses. {hint}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(f"TF_CONFIG has no 'task' with 'type' and 'index' (which of the cluster's tasks this is). {hint}")
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise ValueError(f"TF_CONFIG task type {kind!r} is not a job of the cluster ({', '.join(cluster)}). {hint}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ValueError(f"TF_CONFIG task index {index!r} must be an integer in [0, {len(cluster[kind])}) for job {kind!r}. {hint}")
    return cluster, task


def _tpu_strategy(tf, tpu):
    where = repr(tpu) if tpu else "from the environment (TPU_NAME)"
    hint = "Give the TPU's name or grpc:// address with --tpu (or --tpu local on a Cloud TPU VM)."
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as error:  # ValueError, NotFoundError, URLError, ...: all mean "no usable TPU there"
        raise ValueError(f"No TPU found {where}: {type(error).__name__}: {error}. {hint}") from error
    if not tf.config.list_logical_devices("TPU"):
        raise ValueError(f"No TPU found {where}: the TPU system initialised without TPU devices. {hint}")
    strategy = tf.distribute.TPUStrategy(resolver)
    logger.info("TPUStrategy: %d TPU core(s).", strategy.num_replicas_in_sync)
    return strategy


def task_info(strategy=None):
    """`(task_type, task_id)` of this process in a multi-worker strategy, `(None, None)` otherwise."""
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None, None
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy=None) -> bool:
    """True unless `strategy` is a multi-worker strategy and this process is not its chief (the `chief` task,
    or worker 0 when the cluster has no `chief` job). Callbacks that write shared files ask this."""
    task_type, task_id = task_info(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    if task_type != "worker":
        return False
    return task_id == 0 and "chief" not in strategy.cluster_resolver.cluster_spec().as_dict()


def worker_path(path, strategy=None) -> Path:
    """`path` for the chief; for any other worker a path of its own, `<parent>/.workers/<type>-<id>/<name>`, where
    it can write the same files (its BackupAndRestore directory, or a whole run directory) without racing the
    chief on a shared file system."""
    path = Path(path)
    if is_chief(strategy):
        return path
    task_type, task_id = task_info(strategy)
    return path.parent / ".workers" / f"{task_type}-{task_id}" / path.name


def prepare_for_fit(model, strategy, x, y):
    """Makes a compiled model ready for `model.fit` under `strategy`; call it under `strategy.scope()` after
    `model.compile`, with a tiny example batch `x` (the model's input dict) and labels `y`.

    Builds the model, the optimizer's slots, the compiled loss and the compiled metrics from the example (so
    that BackupAndRestore can load into them), and works around two problems of Keras 3's TensorFlow trainer
    (seen with Keras 3.15 / TensorFlow 2.21) under a distribution strategy:

    * `fit` first "symbolically builds" the model from `strategy.reduce("MEAN", <first batch>)`. That fails for
      dict inputs under MultiWorkerMirroredStrategy (keras-team/keras#20329) and for a batch that does not split
      evenly across the replicas (AddN shape mismatch), and turns int32 token ids into floats. Everything is
      built here, so that step is skipped for this model.
    * under MultiWorkerMirroredStrategy every step's logs are reduced with `strategy.reduce("MEAN", value,
      axis=0)`, which fails for scalar logs ("Invalid reduction dimension 0 for input with 0 dimensions",
      tensorflow/tensorflow#72388). Scalars are then averaged over the replicas with `axis=None` instead.
    """
    import tensorflow as tf

    y_pred = model(x)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.compute_loss(x, y, y_pred)
    model.compute_metrics(x, y, y_pred, None)
    model.reset_metrics()
    # Everything is built, so Keras' symbolic build would only do the failing reduce: skip it for this model.
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        _patch_multi_worker_log_reduction()
    return model


def _patch_multi_worker_log_reduction():
    try:
        from keras.src import tree
        from keras.src.backend.tensorflow import trainer
    except ImportError:  # another backend, or a Keras that moved it: nothing to patch
        return
    original = getattr(trainer, "reduce_per_replica", None)
    is_multi_worker = getattr(trainer, "_collective_all_reduce_multi_worker", None)
    if original is None or is_multi_worker is None or getattr(original, "_keras_transformer_patch", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            def reduce(value):
                rank = strategy.experimental_local_results(value)[0].shape.rank
                return strategy.reduce("MEAN", value, axis=None if rank == 0 else 0)

            return tree.map_structure(reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica._keras_transformer_patch = True
    trainer.reduce_per_replica = reduce_per_replica
    logger.info("Patched Keras' per-step log reduction for MultiWorkerMirroredStrategy (tensorflow/tensorflow#72388).")
