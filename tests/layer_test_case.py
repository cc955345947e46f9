"""`run_layer_test`: the checks every layer of the package must pass, in the spirit of keras-hub's
`TestCase.run_layer_test` (written here rather than importing keras-hub's private test module)."""

import keras
import numpy as np


def run_layer_test(layer_cls, init_kwargs, input_data, expected_output_shape, call_kwargs=None, tmp_path=None):
    """Builds `layer_cls(**init_kwargs)` and checks that:

    - `from_config(get_config())` rebuilds a layer with the same config and, given the same weights, the same output;
    - the output has `expected_output_shape`;
    - under `dtype="mixed_bfloat16"` the weights stay float32 and the output is bfloat16 (float32 in float32);
    - a model holding the layer survives a `.keras` save and load with identical outputs (if `tmp_path` is given).

    `input_data` is one array or a tuple of positional inputs. Returns the float32 layer."""
    call_kwargs = call_kwargs or {}
    inputs = input_data if isinstance(input_data, tuple) else (input_data,)

    layer = layer_cls(**init_kwargs)
    output = layer(*inputs, **call_kwargs)
    output = output[0] if isinstance(output, tuple) else output
    assert tuple(output.shape) == tuple(expected_output_shape), (output.shape, expected_output_shape)
    assert keras.backend.standardize_dtype(output.dtype) == "float32"

    config = layer.get_config()
    rebuilt = layer_cls.from_config(config)
    assert rebuilt.get_config() == config
    again = rebuilt(*inputs, **call_kwargs)
    rebuilt.set_weights(layer.get_weights())
    again = rebuilt(*inputs, **call_kwargs)
    again = again[0] if isinstance(again, tuple) else again
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again), keras.ops.convert_to_numpy(output), atol=1e-6)

    mixed = layer_cls(**init_kwargs, dtype="mixed_bfloat16")
    mixed_output = mixed(*inputs, **call_kwargs)
    mixed_output = mixed_output[0] if isinstance(mixed_output, tuple) else mixed_output
    assert keras.backend.standardize_dtype(mixed_output.dtype) == "bfloat16", mixed_output.dtype
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in mixed.weights)
    assert keras.mixed_precision.dtype_policy().name == "float32"  # no global policy was changed

    if tmp_path is not None:
        symbolic = [keras.Input(shape=np.asarray(x).shape[1:], dtype=str(np.asarray(x).dtype)) for x in inputs]
        result = layer(*symbolic, **call_kwargs)
        model = keras.Model(symbolic, result[0] if isinstance(result, tuple) else result)
        path = tmp_path / f"{layer_cls.__name__}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(loaded(list(inputs) if len(inputs) > 1 else inputs[0])),
            keras.ops.convert_to_numpy(model(list(inputs) if len(inputs) > 1 else inputs[0])),
            atol=1e-6,
        )
    return layer
