"""Checkpoint averaging (paper, section 6.1: "the base models ... averaging the last 5 checkpoints").

Training (`keras_transformer.training.EpochCheckpoints`) writes `checkpoints/epoch-NNNN.npz` after every epoch:
`np.savez(path, *model.get_weights())`, i.e. arrays `arr_0, arr_1, ...` in `model.get_weights()` order.
`average_checkpoints` takes the newest `last` of them, averages every weight element-wise and saves a
float32 `TransformerSeq2SeqLM` built from the run's `config.json`, with the run's tokenizers:

    python -m keras_transformer average --model saved_models/ko-en-small --last 5

The averaged model is a `.keras` file like `model.keras`: load it with `keras_transformer.load_model`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

_CHECKPOINT = re.compile(r"^epoch-(\d+)\.npz$")


def list_checkpoints(run_dir) -> list[Path]:
    """The run's `checkpoints/epoch-*.npz`, oldest first (by epoch number)."""
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_file()]
    return [path for _, path in sorted(found)]


def load_checkpoint(path) -> list[np.ndarray]:
    """The weight list of one `epoch-NNNN.npz` (arrays `arr_0 .. arr_{n-1}`, in that order)."""
    with np.load(path, allow_pickle=False) as data:
        names = sorted(data.files, key=lambda name: int(name.split("_")[1]) if name.startswith("arr_") else -1)
        if [int(n.split("_")[1]) for n in names if n.startswith("arr_")] != list(range(len(names))):
            raise ValueError(f"{path} is not a weights checkpoint (expected arrays arr_0 .. arr_N, found {data.files[:5]}...).")
        return [data[name] for name in names]


def average_weights(weight_lists) -> list[np.ndarray]:
    """Element-wise mean of several weight lists (each like `model.get_weights()`).

    Floating-point arrays are averaged (accumulated in float64, returned in their own dtype); any other array
    (e.g. an integer counter) must not be averaged and is taken from the last list. Raises ValueError when
    the lists differ in length or in the shape of any array.
    """
    weight_lists = [list(weights) for weights in weight_lists]
    if not weight_lists:
        raise ValueError("average_weights needs at least one weight list.")
    count = len(weight_lists[0])
    for i, weights in enumerate(weight_lists[1:], start=1):
        if len(weights) != count:
            raise ValueError(f"Weight list {i} has {len(weights)} arrays, list 0 has {count}: not the same model.")
    averaged = []
    for index, arrays in enumerate(zip(*weight_lists)):
        arrays = [np.asarray(a) for a in arrays]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"Weight {index} has different shapes across the lists: {sorted(shapes)}: not the same model.")
        if np.issubdtype(arrays[0].dtype, np.floating):
            total = np.zeros(arrays[0].shape, np.float64)
            for array in arrays:
                total += array
            averaged.append((total / len(arrays)).astype(arrays[0].dtype))
        else:
            averaged.append(arrays[-1].copy())
    return averaged


def average_checkpoints(run_dir, last: int = 5, out=None) -> Path:
    """Averages the newest `last` epoch checkpoints of `run_dir` into a float32 `.keras` model.

    Args:
        run_dir: a run directory with `config.json`, its tokenizers and `checkpoints/epoch-*.npz`.
        last: how many of the newest checkpoints to average (>= 1). If fewer exist, warns and averages those.
        out: output path ending in `.keras` (default `<run_dir>/averaged.keras`); written atomically.

    Returns:
        The path of the saved model: a `TransformerSeq2SeqLM` with the run's tokenizers, like `model.keras`.
    """
    from keras_transformer.backbone import TransformerBackbone
    from keras_transformer.run_directory import RunDirectory, save_inference_model
    from keras_transformer.seq_2_seq_lm import TransformerSeq2SeqLM

    run = RunDirectory(run_dir)
    if isinstance(last, bool) or not isinstance(last, int) or last < 1:
        raise ValueError(f"last must be an integer >= 1 (how many checkpoints to average), got {last!r}.")
    config = run.model_config()
    checkpoints = list_checkpoints(run.path)
    if not checkpoints:
        raise FileNotFoundError(
            f"No checkpoints in {run.checkpoints_dir} (epoch-NNNN.npz): training writes one per epoch when "
            "keep_checkpoints > 0."
        )
    out = Path(out) if out is not None else run.path / "averaged.keras"
    if out.suffix != ".keras":
        raise ValueError(f"The output path must end in .keras, got {out}.")
    if len(checkpoints) < last:
        warnings.warn(
            f"Asked to average the last {last} checkpoints, but {run.checkpoints_dir} holds only "
            f"{len(checkpoints)}: averaging those.",
            stacklevel=2,
        )
    chosen = checkpoints[-last:]
    averaged = average_weights([load_checkpoint(path) for path in chosen])

    backbone = TransformerBackbone.from_transformer_config(config, dtype="float32")
    expected = [tuple(w.shape) for w in backbone.weights]
    found = [tuple(w.shape) for w in averaged]
    if expected != found:
        if len(expected) != len(found):
            detail = f"the model has {len(expected)} weight arrays, the checkpoints {len(found)}"
        else:
            index = next(i for i, (a, b) in enumerate(zip(expected, found)) if a != b)
            detail = f"weight {index} ({backbone.weights[index].path}) has shape {expected[index]} in the model, {found[index]} in the checkpoints"
        raise ValueError(
            f"The checkpoints in {run.checkpoints_dir} do not fit the model of {run.config_path}: {detail}. "
            "Were they written by a run with another config?"
        )
    backbone.set_weights(averaged)
    preprocessor = run.load_preprocessor()
    save_inference_model(TransformerSeq2SeqLM(backbone, preprocessor, compile=False), out)
    print(f"Averaged {len(chosen)} checkpoint(s): {', '.join(p.name for p in chosen)}.")
    return out
