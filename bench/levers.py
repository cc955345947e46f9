"""A/B switches for the performance levers, applied inside a benchmark worker (`spec["patches"]`).

Each `old_*` function puts back the implementation the library had BEFORE a lever was applied (the code is kept here
verbatim), so that "before" and "after" can be timed in the same run, interleaved; `try_*` functions apply
experimental variants that were measured but not kept. Nothing here is imported by the library.

    python bench/levers.py [--quick] [--repeats 5] [--out bench/levers.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- the code before the levers (verbatim)


def _old_attention_call(
    self,
    query,
    value=None,
    key=None,
    attention_mask=None,
    return_attention_scores=False,
    training=None,
    cache=None,
    cache_update_index=None,
):
    from keras import ops

    q = self._split_heads(self.query_dense(query))
    if cache is not None and cache_update_index is None:
        k, v = cache
    else:
        k, v = _old_compute_key_value(self, query if value is None else value, key)
        if cache is not None:
            start = (0, 0, cache_update_index, 0)
            k = ops.slice_update(cache[0], start, ops.cast(k, cache[0].dtype))
            v = ops.slice_update(cache[1], start, ops.cast(v, cache[1].dtype))
            cache = (k, v)

    scores = ops.einsum("bhqd,bhkd->bhqk", q, k)
    scores = ops.cast(scores, "float32") / ops.sqrt(ops.cast(self.depth, "float32"))
    if attention_mask is not None:
        attention_mask = ops.cast(attention_mask, "bool")
        scores = ops.where(attention_mask, scores, -3.0e38)
    weights = ops.softmax(scores, axis=-1)
    if attention_mask is not None:
        weights = ops.where(attention_mask, weights, 0.0)
    weights = ops.cast(weights, self.compute_dtype)
    dropped = self.dropout_layer(weights, training=training)

    attended = ops.einsum("bhqk,bhkd->bhqd", dropped, ops.cast(v, self.compute_dtype))
    output = self.output_dense(self._merge_heads(attended))

    results = (output,)
    if return_attention_scores:
        results += (weights,)
    if cache is not None:
        results += (cache,)
    return results[0] if len(results) == 1 else results


def _old_compute_key_value(self, value, key=None):
    key = value if key is None else key
    return self._split_heads(self.key_dense(key)), self._split_heads(self.value_dense(value))


def _old_loss_call(self, y_true, y_pred):
    from keras import ops

    y_true = ops.cast(y_true, "int32")
    log_probs = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
    nll = -ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(y_true, -1), axis=-1), -1)
    if self.label_smoothing:
        smooth = -ops.mean(log_probs, axis=-1)
        nll = (1.0 - self.label_smoothing) * nll + self.label_smoothing * smooth
    mask = ops.cast(ops.not_equal(y_true, self.pad_id), "float32")
    return ops.sum(nll * mask) / ops.maximum(ops.sum(mask), 1.0)


def old_attention():
    """Attention as before: dropout applied by the Dropout layer to the weights already cast to the compute dtype
    (bfloat16 random numbers under mixed precision)."""
    from keras_transformer.layers.multi_head_attention import MultiHeadAttention

    MultiHeadAttention.call = _old_attention_call
    MultiHeadAttention.compute_key_value = _old_compute_key_value


def old_loss():
    """Loss as before: log_softmax over the whole [batch, len, vocab] tensor, take_along_axis and mean, differentiated
    by autodiff (the gradient of take_along_axis is a scatter-add into a dense [batch, len, vocab] tensor)."""
    from keras_transformer.losses import MaskedSparseCategoricalCrossentropy

    MaskedSparseCategoricalCrossentropy.call = _old_loss_call


def old_embedding():
    """TokenEmbedding as before: autocast on, so under mixed precision the whole float32 table is cast to bfloat16
    every step and then gathered."""
    from keras_transformer.layers.token_embedding import TokenEmbedding

    init = TokenEmbedding.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.autocast = True

    TokenEmbedding.__init__ = __init__


def _old_accuracy_update_state(self, y_true, y_pred, sample_weight=None):
    from keras import ops

    y_true = ops.cast(y_true, "int32")
    predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
    mask = ops.cast(ops.not_equal(y_true, self.pad_id), "float32")
    if sample_weight is not None:
        mask = mask * ops.cast(sample_weight, "float32")
    self.correct.assign_add(ops.sum(ops.cast(ops.equal(predicted, y_true), "float32") * mask))
    self.total.assign_add(ops.sum(mask))


def old_accuracy():
    """MaskedAccuracy as before: keras.ops.argmax, which casts the logits to float32 and rewrites -0.0 first."""
    from keras_transformer.metrics import MaskedAccuracy

    MaskedAccuracy.update_state = _old_accuracy_update_state


def require_levers():
    """Refuses to measure "after" rows on a working tree where the library levers are missing (an older
    checkout): otherwise "after" would silently time the old code."""
    import keras_transformer.losses as losses
    from keras_transformer.layers.multi_head_attention import MultiHeadAttention

    from keras_transformer.layers.token_embedding import TokenEmbedding

    if (
        not hasattr(losses, "smoothed_cross_entropy")
        or not hasattr(MultiHeadAttention, "_attend")
        or TokenEmbedding(2, 2).autocast
    ):
        raise RuntimeError("the library levers are not in this working tree (this benchmark expects the current library)")


def old_all():
    old_attention()
    old_loss()
    old_embedding()
    old_accuracy()


# ---------------------------------------------------------------- experiments (measured, not kept)


def try_low_precision_softmax():
    """Scores, mask and softmax in the compute dtype (bfloat16 under mixed precision) instead of float32."""
    from keras import ops

    from keras_transformer.layers.multi_head_attention import MultiHeadAttention

    current = MultiHeadAttention._attend

    def _attend(self, q, k, v, attention_mask, training):
        if self.compute_dtype == "float32":
            return current(self, q, k, v, attention_mask, training)
        scores = ops.einsum("bhqd,bhkd->bhqk", q, k) * ops.cast(self.depth**-0.5, self.compute_dtype)
        if attention_mask is not None:
            attention_mask = ops.cast(attention_mask, "bool")
            scores = ops.where(attention_mask, scores, ops.cast(-3.0e38, self.compute_dtype))
        weights = ops.softmax(scores, axis=-1)
        if attention_mask is not None:
            weights = ops.where(attention_mask, weights, ops.cast(0.0, self.compute_dtype))
        dropped = self.dropout_layer(weights, training=training)
        return ops.einsum("bhqk,bhkd->bhqd", dropped, ops.cast(v, self.compute_dtype)), weights

    MultiHeadAttention._attend = _attend


def try_dropout_before_cast():
    """Attention-weight dropout on the float32 weights, then the cast to the compute dtype (float32 random numbers
    are cheaper to draw than bfloat16 ones)."""
    import keras
    from keras import ops

    from keras_transformer.layers.multi_head_attention import MultiHeadAttention

    def _attend(self, q, k, v, attention_mask, training):
        scores = ops.einsum("bhqd,bhkd->bhqk", q, k)
        scores = ops.cast(scores, "float32") / ops.sqrt(ops.cast(self.depth, "float32"))
        if attention_mask is not None:
            attention_mask = ops.cast(attention_mask, "bool")
            scores = ops.where(attention_mask, scores, -3.0e38)
        weights = ops.softmax(scores, axis=-1)
        if attention_mask is not None:
            weights = ops.where(attention_mask, weights, 0.0)
        dropped = weights
        if training and self.dropout > 0:
            dropped = keras.random.dropout(weights, self.dropout, seed=self.dropout_layer.seed_generator)
        dropped = ops.cast(dropped, self.compute_dtype)
        return ops.einsum("bhqk,bhkd->bhqd", dropped, ops.cast(v, self.compute_dtype)), ops.cast(weights, self.compute_dtype)

    MultiHeadAttention._attend = _attend


def try_single_query():
    """One query position (incremental decoding): scores and the weighted sum as broadcast-multiply + reduce in
    float32 instead of two batched dots (tiny batched dots are slow under XLA on CPU)."""
    from keras import ops

    from keras_transformer.layers.multi_head_attention import MultiHeadAttention

    current = MultiHeadAttention._attend

    def _attend(self, q, k, v, attention_mask, training):
        if q.shape[2] != 1 or training:
            return current(self, q, k, v, attention_mask, training)
        scores = ops.sum(ops.cast(q, "float32") * ops.cast(k, "float32"), axis=-1)[:, :, None, :]
        scores = scores / ops.sqrt(ops.cast(self.depth, "float32"))
        if attention_mask is not None:
            attention_mask = ops.cast(attention_mask, "bool")
            scores = ops.where(attention_mask, scores, -3.0e38)
        weights = ops.softmax(scores, axis=-1)
        if attention_mask is not None:
            weights = ops.where(attention_mask, weights, 0.0)
        attended = ops.sum(ops.expand_dims(weights[:, :, 0, :], -1) * ops.cast(v, "float32"), axis=2, keepdims=True)
        return ops.cast(attended, self.compute_dtype), ops.cast(weights, self.compute_dtype)

    MultiHeadAttention._attend = _attend


def try_fused_qkv():
    """Self-attention Q, K and V (and cross-attention K and V) in one matmul with the kernels side by side."""
    from keras import ops

    from keras_transformer.layers.multi_head_attention import MultiHeadAttention

    def fused(self, x, layers):
        dtype = self.compute_dtype
        x = ops.cast(x, dtype)
        kernel = ops.concatenate([ops.cast(layer.kernel, dtype) for layer in layers], axis=-1)
        bias = ops.concatenate([ops.cast(layer.bias, dtype) for layer in layers], axis=-1)
        y = ops.matmul(x, kernel) + bias
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        y = ops.reshape(y, (batch, length, len(layers), self.num_heads, self.depth))
        return ops.unstack(ops.transpose(y, (2, 0, 3, 1, 4)), axis=0)

    def compute_key_value(self, value, key=None):
        if key is None or key is value:
            return tuple(fused(self, value, (self.key_dense, self.value_dense)))
        return _old_compute_key_value(self, value, key)

    def call(self, query, value=None, key=None, attention_mask=None, return_attention_scores=False, training=None,
             cache=None, cache_update_index=None):
        if cache is not None and cache_update_index is None:
            q = self._split_heads(self.query_dense(query))
            k, v = cache
        else:
            if (value is None or value is query) and key is None:
                q, k, v = fused(self, query, (self.query_dense, self.key_dense, self.value_dense))
            else:
                q = self._split_heads(self.query_dense(query))
                k, v = compute_key_value(self, value, key)
            if cache is not None:
                start = (0, 0, cache_update_index, 0)
                k = ops.slice_update(cache[0], start, ops.cast(k, cache[0].dtype))
                v = ops.slice_update(cache[1], start, ops.cast(v, cache[1].dtype))
                cache = (k, v)
        attended, weights = self._attend(q, k, v, attention_mask, training)
        output = self.output_dense(self._merge_heads(attended))
        results = (output,)
        if return_attention_scores:
            results += (weights,)
        if cache is not None:
            results += (cache,)
        return results[0] if len(results) == 1 else results

    MultiHeadAttention.call = call
    MultiHeadAttention.compute_key_value = compute_key_value


# ---------------------------------------------------------------- A/B runner


def main(argv=None):
    sys.path.insert(0, str(HERE))
    import bench

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--variants", default=None, help="semicolon-separated names of the variants (default: all)")
    parser.add_argument("--out", default=str(HERE / "levers.json"))
    args = parser.parse_args(argv)
    model = bench.QUICK if args.quick else bench.REFERENCE
    variants = {
        "before (library levers off)": dict(patches=["old_all"]),
        "after (library levers on)": dict(patches=[]),
        "after + XLA fusion (opt-in)": dict(patches=[], env=bench.XLA_FUSION_ENV),
        "after, without the accuracy lever": dict(patches=["old_accuracy"]),
        "after, without the loss lever": dict(patches=["old_loss"]),
        "after, without the attention-dropout lever": dict(patches=["old_attention"]),
        "after, without the embedding lever": dict(patches=["old_embedding"]),
        "after, no accuracy metric": dict(patches=[], metrics=False),
        "after + fused QKV/KV projections": dict(patches=["try_fused_qkv"]),
        "after + bf16 scores/softmax": dict(patches=["try_low_precision_softmax"]),
        "after + threads intra 2 / inter 1": dict(patches=[], threads="2,1"),
        "after + threads intra 1 / inter 1": dict(patches=[], threads="1,1"),
    }
    # Groups of at most 5 workers (memory), each timed interleaved; ratios are within a group, against its first row.
    groups = [
        ["before (library levers off)", "after (library levers on)", "after + XLA fusion (opt-in)",
         "after, without the accuracy lever", "after, without the loss lever"],
        ["after (library levers on)", "after, without the attention-dropout lever", "after, without the embedding lever",
         "after, no accuracy metric", "after + fused QKV/KV projections"],
        ["after (library levers on)", "after + bf16 scores/softmax",
         "after + threads intra 2 / inter 1", "after + threads intra 1 / inter 1"],
    ]
    if args.variants:
        groups = [args.variants.split(";")]
    base = dict(model=model, steps=1 if args.quick else args.steps, warmup=1 if args.quick else 3, seed=0, impl="ours",
                precision=args.precision, jit=False, threads=None)
    out = {"precision": args.precision, "model": model, "groups": []}
    lines = [f"| group | variant ({args.precision}) | target tok/s | step ms | vs first row of its group | final loss |",
             "|---|---|---|---|---|---|"]
    for number, names in enumerate(groups, 1):
        specs = [
            {**base, **variants[name], "name": name, "patches": ["require_levers", *variants[name]["patches"]]}
            for name in names
        ]
        raw = bench.interleaved(specs, "train", 1 if args.quick else args.repeats)
        rows = bench.summarize_training(raw, baseline=names[0])
        first = rows[names[0]]["target_tokens_per_s"]
        for name, row in rows.items():
            row["ratio_vs_group_first"] = round(row["target_tokens_per_s"] / first, 3)
            lines.append(
                f"| {number} | {name} | {row['target_tokens_per_s']:,.0f} | {row['step_ms']:.0f} | "
                f"{row['ratio_vs_group_first']:.3f}x | {row['final_loss']:.4f} |"
            )
        out["groups"].append(rows)
        Path(args.out).write_text(json.dumps(out, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
