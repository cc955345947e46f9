"""Add & Norm around every sub-layer (paper, section 5.4 / figure 1), post-LN or pre-LN.

post-LN (the paper, `norm_first=False`): x = LayerNorm(x + Dropout(Sublayer(x)))
pre-LN (`norm_first=True`):              x = x + Dropout(Sublayer(LayerNorm(x)))
"""


def sublayer_input(x, norm, norm_first):
    """What the sub-layer reads: `LayerNorm(x)` for pre-LN, `x` itself for post-LN."""
    return norm(x) if norm_first else x


def add_and_norm(x, sublayer_output, dropout, norm, norm_first, training=None):
    """Dropout on the sub-layer output, residual add, and (post-LN) LayerNorm."""
    x = x + dropout(sublayer_output, training=training)
    return x if norm_first else norm(x)
