"""The paper's optimizer (section 5.3): Adam with beta_1=0.9, beta_2=0.98, epsilon=1e-9 on the warmup schedule."""

import keras

from keras_transformer.schedules import WarmupSchedule


def create_optimizer(d_model, warmup_steps=4000, scale=1.0, **adam_kwargs):
    """`keras.optimizers.Adam(WarmupSchedule(d_model, warmup_steps), beta_1=0.9, beta_2=0.98, epsilon=1e-9)`.

    Example:
    >>> optimizer = create_optimizer(d_model=512)
    >>> optimizer.beta_2
    0.98
    """
    kwargs = dict(beta_1=0.9, beta_2=0.98, epsilon=1e-9)
    kwargs.update(adam_kwargs)
    return keras.optimizers.Adam(learning_rate=WarmupSchedule(d_model, warmup_steps, scale), **kwargs)
