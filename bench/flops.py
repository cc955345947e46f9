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
so a training step is 3x the forward. Lengths are the padded lengths: the model computes over pad positions too.
keras-hub's TransformerEncoder/Decoder stack of the same sizes does the same matmuls.
"""

from __future__ import annotations


def forward_flops(config, batch, source_len, target_len):
    """Matmul FLOPs of one forward pass over a `[batch, source_len]` / `[batch, target_len]` batch; `config` has
    `num_layers`, `d_model`, `dff` and `tgt_vocab_size` (a `TransformerConfig`)."""
    S, T = source_len, target_len
    d, f, V, n = config.d_model, config.dff, config.tgt_vocab_size, config.num_layers
    encoder_layer = 4 * 2 * S * d * d + 2 * 2 * S * S * d + 2 * 2 * S * d * f
    decoder_layer = (
        4 * 2 * T * d * d + 2 * 2 * T * T * d  # self-attention
        + 2 * 2 * T * d * d + 2 * 2 * S * d * d + 2 * 2 * T * S * d  # cross-attention
        + 2 * 2 * T * d * f  # feed-forward
    )
    output_projection = 2 * T * d * V
    return batch * (n * encoder_layer + n * decoder_layer + output_projection)


def training_step_flops(config, batch, source_len, target_len):
    """Matmul FLOPs of one training step: forward + backward (2x forward)."""
    return 3 * forward_flops(config, batch, source_len, target_len)
