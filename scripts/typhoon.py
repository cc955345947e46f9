"""Typhoon forecast: the lecture's non-text example of the encoder-decoder Transformer.

The encoder reads 30 days of weather readings (continuous feature vectors, not tokens); the decoder writes a
7-day forecast, one "yes"/"no" token per day, then END.

The data are synthetic, generated in this script with a fixed seed. THE RULE:

    Each sample is 30 consecutive days (day 0 .. day 29) of three daily readings:
        T[d]  sea-surface temperature in deg C, an AR(1) process around 27.0 (sd 1.5, day-to-day corr. 0.8)
        P[d]  air pressure in hPa, an independent AR(1) process around 1008.0 (sd 5.0, corr. 0.8)
        H[d]  relative humidity in %, uniform noise in [60, 100]: a distractor, not used by the rule
    The forecast covers days 30 .. 36. Forecast day 30 + j (j = 0 .. 6) is a TYPHOON day if and only if,
    over the 3-day window of days 21 + j, 22 + j, 23 + j (i.e. 7 to 9 days earlier),
        mean(T) > 26.8   AND   mean(P) < 1009.0.

So every forecast day looks at its own shifted window: the model has to learn where to look for each output
position (cross-attention + positional encoding) and to combine two thresholds. About a third of the days are
typhoon days, so always answering "no" scores about 67%: that majority-class baseline is printed too.

Vocabulary of the decoder: 0 = pad, 1 = unused, 2 = START, 3 = END, 4 = "no", 5 = "yes".
Decoder input: START d30 .. d36 (teacher forcing); labels: d30 .. d36 END.

Printed results on held-out samples (parsed by tests/test_typhoon_script.py, one `name: value` per line):
    majority_baseline_accuracy   always predicting the training set's majority class, per forecast day
    teacher_forced_accuracy      argmax of each day given the true previous days, per forecast day
    free_running_accuracy        greedy decoding written below (feed back the argmax), per forecast day
    free_running_sequence_accuracy   all 7 days right

Greedy decoding is a plain loop over the full model (one forward pass per generated day, no key/value cache):
the forecast is only 8 tokens long, and the cached decoder of `keras_transformer.decoding` looks layers up via
`model.layer_getter`, which does not know the `source_projection` layer of an `encoder_input_dim` model.

Usage (defaults: about 40 s of training, under a minute in all, on 2 CPU cores):
    python scripts/typhoon.py [--epochs 20] [--samples 4096] [--seed 0] [--batch-size 64]
"""

import argparse
import os
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_transformer import (  # noqa: E402
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    TransformerConfig,
    build_transformer,
    create_optimizer,
)

PAD, START, END, NO, YES = 0, 2, 3, 4, 5
TGT_VOCAB = 6
INPUT_DAYS, FORECAST_DAYS = 30, 7
WINDOW_START, WINDOW = 21, 3  # forecast day 30 + j reads days 21 + j .. 23 + j
T_MEAN, T_SD, T_THRESHOLD = 27.0, 1.5, 26.8
P_MEAN, P_SD, P_THRESHOLD = 1008.0, 5.0, 1009.0
AR_COEFFICIENT = 0.8


def ar1(rng, n, days, mean, sd, a=AR_COEFFICIENT):
    """`n` stationary AR(1) series of `days` values with the given mean, standard deviation and lag-1 correlation."""
    x = np.zeros((n, days))
    x[:, 0] = rng.normal(0.0, sd, n)
    for d in range(1, days):
        x[:, d] = a * x[:, d - 1] + rng.normal(0.0, sd * np.sqrt(1 - a * a), n)
    return mean + x


def typhoon_labels(temperature, pressure):
    """THE RULE: `[n, 7]` bool, day 30 + j is a typhoon day iff the window of days 21+j..23+j has
    mean temperature > 26.8 and mean pressure < 1009.0."""
    days = []
    for j in range(FORECAST_DAYS):
        window = slice(WINDOW_START + j, WINDOW_START + j + WINDOW)
        days.append(
            (temperature[:, window].mean(axis=1) > T_THRESHOLD) & (pressure[:, window].mean(axis=1) < P_THRESHOLD)
        )
    return np.stack(days, axis=1)


def make_data(n, seed):
    """Features `[n, 30, 3]` float32 (standardized), decoder inputs and labels `[n, 8]` int32, raw labels `[n, 7]`."""
    rng = np.random.default_rng(seed)
    temperature = ar1(rng, n, INPUT_DAYS, T_MEAN, T_SD)
    pressure = ar1(rng, n, INPUT_DAYS, P_MEAN, P_SD)
    humidity = rng.uniform(60.0, 100.0, size=(n, INPUT_DAYS))
    typhoon = typhoon_labels(temperature, pressure)

    features = np.stack(
        [(temperature - T_MEAN) / T_SD, (pressure - P_MEAN) / P_SD, (humidity - 80.0) / 11.5], axis=-1
    ).astype("float32")
    day_tokens = np.where(typhoon, YES, NO).astype("int32")
    decoder_inputs = np.concatenate([np.full((n, 1), START, "int32"), day_tokens], axis=1)
    labels = np.concatenate([day_tokens, np.full((n, 1), END, "int32")], axis=1)
    return {"encoder_inputs": features, "decoder_inputs": decoder_inputs}, labels, day_tokens


def greedy_decode(model, features, steps=FORECAST_DAYS + 1, batch_size=512):
    """Free-running decoding: start from START, append the argmax of the last position, repeat."""
    # The first step attends over a single decoder position; Keras warns about a softmax over one key.
    warnings.filterwarnings("ignore", message="You are using a softmax over axis -1")
    outputs = []
    for begin in range(0, len(features), batch_size):
        chunk = features[begin : begin + batch_size]
        tokens = np.full((len(chunk), 1), START, "int32")
        for _ in range(steps):
            logits = model({"encoder_inputs": chunk, "decoder_inputs": tokens}, training=False)
            next_token = np.argmax(keras.ops.convert_to_numpy(logits[:, -1]), axis=-1).astype("int32")
            tokens = np.concatenate([tokens, next_token[:, None]], axis=1)
        outputs.append(tokens[:, 1:])  # drop START
    return np.concatenate(outputs, axis=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--samples",
        type=int,
        default=4096,
        help="training samples, rounded down to whole batches (held-out: a quarter as many, at least 200)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    # Whole batches only: one batch shape, one trace of the train step.
    n_train = max(args.samples // args.batch_size, 1) * args.batch_size
    x_train, y_train, days_train = make_data(n_train, seed=args.seed)
    n_test = max(args.samples // 4, 200)
    x_test, y_test, days_test = make_data(n_test, seed=args.seed + 10_000)

    config = TransformerConfig(
        num_layers=2,
        d_model=32,
        num_heads=4,
        dff=64,
        dropout_rate=0.0,
        tgt_vocab_size=TGT_VOCAB,
        max_length=INPUT_DAYS + 2,
        encoder_input_dim=x_train["encoder_inputs"].shape[-1],
    )
    model = build_transformer(config, name="typhoon_transformer")
    model.compile(
        optimizer=create_optimizer(config.d_model, warmup_steps=200),
        loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.0),
        metrics=[MaskedAccuracy()],
        jit_compile=False,
    )

    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    train_seconds = time.perf_counter() - start

    # Majority-class baseline: the most frequent day label of the training set, for every held-out day.
    majority = YES if (days_train == YES).mean() > 0.5 else NO
    baseline = float((days_test == majority).mean())

    logits = model.predict(x_test, batch_size=n_test, verbose=0)
    teacher_forced = float((np.argmax(logits[:, :FORECAST_DAYS], axis=-1) == days_test).mean())
    evaluation = model.evaluate(x_test, y_test, batch_size=n_test, verbose=0, return_dict=True)
    token_accuracy = float(evaluation["masked_accuracy"])

    decoded = greedy_decode(model, x_test["encoder_inputs"], batch_size=n_test)
    free_days = decoded[:, :FORECAST_DAYS]
    free_running = float((free_days == days_test).mean())
    free_sequences = float(np.all(free_days == days_test, axis=1).mean())
    ends_right = float((decoded[:, FORECAST_DAYS] == END).mean())

    print(f"train_samples: {n_train}")
    print(f"test_samples: {n_test}")
    print(f"typhoon_day_rate: {(days_test == YES).mean():.4f}")
    print(f"train_seconds: {train_seconds:.1f}")
    print(f"majority_baseline_accuracy: {baseline:.4f}")
    print(f"teacher_forced_token_accuracy_with_end: {token_accuracy:.4f}")
    print(f"teacher_forced_accuracy: {teacher_forced:.4f}")
    print(f"free_running_accuracy: {free_running:.4f}")
    print(f"free_running_sequence_accuracy: {free_sequences:.4f}")
    print(f"free_running_end_token_rate: {ends_right:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
