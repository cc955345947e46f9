"""Matmul FLOPs of one training step of the encoder-decoder Transformer, counted once, here.

A matmul of `[m, k] x [k, n]` is `2 * m * k * n` FLOPs (one multiply and one add per term). Per sentence, with
source length S, target length T, model width d, feed-forward width f and target vocabulary V (the number of heads
does not matter: h heads of width d/h do the work of one of width d):

    encoder layer:  Q, K, V, output projections  4 * 2*S*d*d
                    scores Q K^T, weighted sum   2 * 2*S*S*d
                    feed-forward                 2 * 2*S*d*f
    decoder layer:  self-attention               4 * 2*T*d*d + 2 * 2*T*T*d
                    cross-attention Q, output    2 * 2*T*d*d
                    cross-attention K, V         2 * 2*S*d*d   (over the encoder output)
                    cross scores, weighted sum   2 * 2*T*S*d
                    feed-forward                 2 * 2*T*d*f
    output projection                            2*T*d*V       (also when it is the shared embedding, reversed)

Embedding lookups, LayerNorm, softmax, dropout, the loss and the optimizer are not matmuls and are not counted. The
backward pass is counted as twice the forward (a gradient for the input and one for the weights of every matmul),
so a training step is 3x the forward. Lengths are the padded lengths. A padded implementation computes over pad
positions too, and keras-hub's TransformerEncoder/Decoder stack of the same sizes does exactly these matmuls.

With token packing (keras_transformer/layers/token_packing.py) our layers run the position-wise matmuls (the
projections and the feed-forward) over the real tokens only: pass `source_tokens` / `target_tokens`, the real
positions of the whole batch, to count the matmuls that are actually executed. Attention scores and weighted sums
stay over the padded lengths, and so does the output projection (the logits leave the model padded).
"""

from __future__ import annotations


def forward_flops(config, batch, source_len, target_len, source_tokens=None, target_tokens=None):
    """Matmul FLOPs of one forward pass over a `[batch, source_len]` / `[batch, target_len]` batch; `config` has
    `num_layers`, `d_model`, `dff` and `tgt_vocab_size` (a `TransformerConfig`). `source_tokens` / `target_tokens`:
    the positions the position-wise matmuls run on (default: all, `batch * length`)."""
    S, T = source_len, target_len
    d, f, V, n = config.d_model, config.dff, config.tgt_vocab_size, config.num_layers
    S_rows = batch * S if source_tokens is None else source_tokens  # rows of the position-wise matmuls
    T_rows = batch * T if target_tokens is None else target_tokens
    encoder_layer = S_rows * (4 * 2 * d * d + 2 * 2 * d * f) + batch * 2 * 2 * S * S * d
    decoder_layer = (
        T_rows * (4 * 2 * d * d) + batch * 2 * 2 * T * T * d  # self-attention
        + T_rows * 2 * 2 * d * d + S_rows * 2 * 2 * d * d + batch * 2 * 2 * T * S * d  # cross-attention
        + T_rows * 2 * 2 * d * f  # feed-forward
    )
    output_projection = batch * 2 * T * d * V
    return n * encoder_layer + n * decoder_layer + output_projection


def training_step_flops(config, batch, source_len, target_len, source_tokens=None, target_tokens=None):
    """Matmul FLOPs of one training step: forward + backward (2x forward)."""
    return 3 * forward_flops(config, batch, source_len, target_len, source_tokens, target_tokens)
