"""The paper's learning-rate schedule (section 5.3)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_transformer")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lrate = scale * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)

    Rises linearly for `warmup_steps` steps, peaks at step `warmup_steps` with
    `scale * (d_model * warmup_steps)^-0.5`, then decays with the inverse square root of the step.
    Step 0 is treated as step 1 (Keras counts optimizer iterations from 0).

    Args:
        d_model: model width.
        warmup_steps: 4000 in the paper.
        scale: a constant factor (1.0 in the paper).

    Example:
    >>> schedule = WarmupSchedule(d_model=512, warmup_steps=4000)
    >>> round(float(schedule(4000)), 6)
    0.000699
    """

    def __init__(self, d_model, warmup_steps=4000, scale=1.0):
        if d_model <= 0 or warmup_steps <= 0 or scale <= 0:
            raise ValueError(
                f"d_model, warmup_steps and scale must be positive, got {d_model}, {warmup_steps}, {scale}."
            )
        self.d_model = int(d_model)
        self.warmup_steps = int(warmup_steps)
        self.scale = float(scale)

    def __call__(self, step):
        step = ops.maximum(ops.cast(step, "float32"), 1.0)
        warmup = ops.cast(self.warmup_steps, "float32")
        rate = ops.minimum(ops.rsqrt(step), step * warmup**-1.5)
        return self.scale * ops.rsqrt(ops.cast(self.d_model, "float32")) * rate

    def get_config(self):
        return {"d_model": self.d_model, "warmup_steps": self.warmup_steps, "scale": self.scale}
