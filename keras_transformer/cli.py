"""`keras-transformer` command line: parses arguments, then calls the library.

TensorFlow is imported only inside the commands, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

LECTURE_SENTENCE = "어제 카페 갔었어 거기 사람 많더라"
DEFAULT_RUNS_DIR = "saved_models"
DEFAULT_RUN_NAME = "ko-en-small"
# How `train` decodes its test-set evaluation and sample translations unless told otherwise: beam search, which
# beat greedy decoding on the bundled dev and test splits (README, Results).
MAIN_JOB_DECODING = ("beam", {"beam_size": 4, "alpha": 1.0})


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not args.verbose:
        from keras_transformer.runtime import hide_native_logs

        hide_native_logs()
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as error:
        # Bad input, a missing file, a full disk, no permission: one clear line, no stack trace from deep inside
        # TensorFlow (every file is written through a temporary name, so nothing half-written is left).
        print(f"error: {error}", file=sys.stderr)
        return 2


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-transformer",
        description="Train, evaluate, run and plot the Transformer of 'Attention Is All You Need'.",
    )
    parser.add_argument("--verbose", action="store_true", help="also show TensorFlow's own start-up and device messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a translator (default: the small preset on the bundled ko-en corpus), then evaluate it",
        description="Learn tokenizers, train with model.fit (warmup schedule, label smoothing, bucketing), keep "
        "the best model by dev BLEU, evaluate on the test split and translate a few sentences. Re-running the "
        "same command resumes an interrupted run. Settings: a YAML/JSON --config file, then flags on top.",
    )
    train.add_argument("--config", help="YAML or JSON file with training settings (keys of TrainingConfig)")
    train.add_argument("--run-name", default=None, help=f"run directory name under --runs-dir (default {DEFAULT_RUN_NAME})")
    train.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="where run directories live (default: saved_models)")
    _add_data_arguments(train)
    train.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a model field, e.g. --set num_layers=4 (repeatable)")
    _add_training_settings(train)
    train.add_argument("--no-evaluate", action="store_true", help="skip the test-set evaluation and sample translations")
    _add_decoding_arguments(train, "of the test-set evaluation and the sample translations", MAIN_JOB_DECODING, names=("greedy", "beam"))
    train.add_argument(
        "--strategy", choices=["default", "mirrored", "multi_worker", "tpu"], default="default",
        help="tf.distribute strategy: default (one device), mirrored (all local GPUs), multi_worker (machines "
        "listed in TF_CONFIG), tpu (--tpu address); --tokens-per-batch is the global batch",
    )
    train.add_argument("--tpu", default=None, help="TPU name or grpc:// address for --strategy tpu (default: from the environment)")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="BLEU and chrF of a trained model on a parallel file or a bundled split")
    evaluate.add_argument("--model", required=True, help="run directory (saved_models/<run-name>), or a .keras file in one")
    _add_data_arguments(evaluate, evaluation=True)
    evaluate.add_argument("--out", help="directory for hypotheses.txt and report.json (default: <model>/eval-<split or file>)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="sentences decoded together (default 64)")
    _add_precision_argument(evaluate)
    _add_decoding_arguments(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    translate = commands.add_parser("translate", help="translate sentences given as arguments, in a file, or on stdin")
    translate.add_argument("text", nargs="*", help="sentences to translate (none: read --file or stdin, one per line)")
    translate.add_argument("--model", required=True, help="run directory (saved_models/<run-name>), .keras file, preset, SavedModel export, .tflite file or CTranslate2 export")
    translate.add_argument("--file", help="file with one sentence per line")
    translate.add_argument("--batch-size", type=int, default=64, help="sentences decoded together (default 64)")
    _add_precision_argument(translate)
    _add_decoding_arguments(translate)
    translate.set_defaults(func=cmd_translate)

    export = commands.add_parser(
        "export",
        help="export a trained model as a SavedModel (TF Serving layout), a TFLite model or a CTranslate2 model",
        description="saved_model: <out>/<model-name>/<version>/ with a strings-in/strings-out signature "
        "(serving_default) and an ids-in/ids-out one (translate_ids). tflite: <out>/<model-name>.tflite with the "
        "greedy decode loop inside, plus its tokenizers beside it under its name. ctranslate2: "
        "<out>/<model-name>-ctranslate2/, a CTranslate2 model directory with its tokenizers (pip install "
        "keras-transformer[ctranslate2]); see docs/ctranslate2.md.",
    )
    export.add_argument("--model", required=True, help="run directory (saved_models/<run-name>)")
    export.add_argument("--format", required=True, choices=["saved_model", "tflite", "ctranslate2"])
    export.add_argument("--out", default="exports", help="export directory (default: exports)")
    export.add_argument("--model-name", default="translator", help="model name (TF Serving's MODEL_NAME; default translator)")
    export.add_argument("--version", type=int, help="SavedModel version number (default: next free one)")
    export.add_argument(
        "--quantize", choices=["none", "float16", "dynamic", "int8", "int16"], default="none",
        help="weights: TFLite none|float16|dynamic; CTranslate2 none|int8|int16 (default none)",
    )
    export.add_argument("--ids-only", action="store_true", help="SavedModel without tokenizers (no custom ops): only translate_ids")
    export.set_defaults(func=cmd_export)

    average = commands.add_parser(
        "average",
        help="average the weights of a run's last N epoch checkpoints (paper, section 6.1)",
        description="Writes <model>/averaged.keras (or --out) with the element-wise mean of the last N checkpoints in "
        "<model>/checkpoints/ (saved after each epoch). Evaluate or use it like the run's own model: "
        "`keras-transformer evaluate --model <model>/averaged.keras`.",
    )
    average.add_argument("--model", required=True, help="run directory (saved_models/<run-name>)")
    average.add_argument("--last", type=int, default=5, help="how many of the newest checkpoints to average (default 5)")
    average.add_argument("--out", help="output .keras path (default <model>/averaged.keras)")
    average.set_defaults(func=cmd_average)

    upgrade = commands.add_parser(
        "upgrade",
        help="convert a run directory written by keras-transformer 0.1 to this version's model.keras",
        description="Loads the old model.keras with the run's config.json and tokenizers and writes it again as a "
        "TransformerSeq2SeqLM that holds its tokenizers (the old file is replaced atomically).",
    )
    upgrade.add_argument("--model", required=True, help="run directory (saved_models/<run-name>)")
    upgrade.set_defaults(func=cmd_upgrade)

    from keras_transformer.serving.server import add_serve_arguments

    add_serve_arguments(commands.add_parser(
        "serve",
        help="serve a SavedModel export over TF Serving's REST and gRPC APIs (micro-batched, polls for new versions)",
        description="Speaks TensorFlow Serving's REST API (/v1/models/<name>[:predict|/metadata]) for an export "
        "written by `keras-transformer export --format saved_model`; see docs/serving.md.",
    ))

    from keras_transformer.demo import DEMO_DESCRIPTION, DEMO_HELP, add_demo_arguments

    add_demo_arguments(commands.add_parser("demo", help=DEMO_HELP, description=DEMO_DESCRIPTION))

    plot = commands.add_parser("plot", help="write PNG plots: attention heatmaps, positional encoding, schedule, curves")
    plot.add_argument("what", choices=["attention", "positional-encoding", "schedule", "curves", "all"])
    plot.add_argument("--model", help="run directory (needed for attention, schedule and curves)")
    plot.add_argument("--sentence", default=LECTURE_SENTENCE, help="source sentence for the attention plots")
    plot.add_argument("--target", help="target sentence for the attention plots (default: the model's translation)")
    plot.add_argument("--layer", type=int, default=-1, help="which layer's attention to plot (default: last)")
    plot.add_argument("--out", default=None, help="output directory (default: <model>/plots or ./plots)")
    plot.set_defaults(func=cmd_plot)
    return parser


def _add_training_settings(parser):
    """One flag per TrainingConfig setting, with its help, choices and default taken from the dataclass (flags default
    to None, so that only the settings given on the command line replace those of a --config file)."""
    import dataclasses

    from keras_transformer.config import TrainingConfig

    group = parser.add_argument_group("training settings (keys of TrainingConfig; also for --config files)")
    for field in dataclasses.fields(TrainingConfig):
        meta = field.metadata
        if "help" not in meta:
            continue
        flag = "--" + (meta["flag"] or field.name.replace("_", "-"))
        text = f"{meta['help']} (default {field.default})"
        if isinstance(field.default, bool):
            group.add_argument(flag, dest=field.name, action="store_const", const=True, default=None, help=text)
        else:
            kind = meta["type"] or type(field.default)
            group.add_argument(flag, dest=field.name, type=kind, choices=meta["choices"], default=None, help=text)


def _add_precision_argument(parser):
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "float32", "model", "int8"],
        help="weights the decode loop of a run directory, .keras file or preset computes with (Translator's "
        "decode_precision): auto (default: float32 on a CPU, the model's own on a GPU), float32, model (as trained), "
        "int8 (dense layers in int8: faster at batch 32 on a CPU, tokens close to float32's; README, Performance)",
    )


def _add_decoding_arguments(parser, purpose="", default=None, names=None):
    """--decoding and the options of the decodings `names` (default: all), from the registry
    (keras_transformer.decoding.decodings). `default`: `(name, options)` used when none of these flags is given
    (else greedy, or beam when --beam-size > 1)."""
    from keras_transformer.decoding.decodings import DECODINGS

    decodings = {name: spec for name, spec in DECODINGS.items() if names is None or name in names}

    group = parser.add_argument_group("decoding " + purpose if purpose else "decoding")
    if default is None:
        default_text = "default greedy, or beam when --beam-size > 1"
    else:
        default_text = f"default {default[0]} with " + ", ".join(f"{k} {v}" for k, v in default[1].items())
    group.add_argument(
        "--decoding", choices=list(decodings), default=None,
        help="; ".join(f"{d.name}: {d.description}" for d in decodings.values()) + f" ({default_text})",
    )
    parser.set_defaults(default_decoding=default, decoding_names=tuple(decodings))
    for spec in decodings.values():
        for option, default in spec.options.items():
            group.add_argument(
                f"--{option.replace('_', '-')}", type=type(default), default=None,
                help=f"{spec.help[option]} ({spec.name} only; default {default})",
            )


def _decoding_from_args(args):
    """`(decoding name, its options)` from the flags given; the registry refuses options the decoding does not take."""
    from keras_transformer.decoding.decodings import DECODINGS, choose_decoding, resolve_decoding

    # Only the options of the decodings this command offers: `train --seed` is the training seed, not sampling's.
    offered = [DECODINGS[name] for name in args.decoding_names]
    options = {o: getattr(args, o) for spec in offered for o in spec.options if getattr(args, o, None) is not None}
    if args.decoding is None and getattr(args, "default_decoding", None) is not None:
        # The command's own default, with the options given replacing its own; --beam-size 1 alone means greedy.
        decoding, defaults = args.default_decoding
        if options.get("beam_size") == 1 and set(options) == {"beam_size"}:
            return "greedy", {}
        options = {**defaults, **options}
    else:
        decoding, options = choose_decoding(args.decoding, options)
    resolve_decoding(decoding, **options)
    return decoding, options


def _add_data_arguments(parser, evaluation=False):
    group = parser.add_argument_group("data")
    if evaluation:
        group.add_argument("--data", help="parallel TSV/CSV file (.gz ok) to score on (default: the bundled --split)")
        group.add_argument("--split", default="test", choices=["train", "dev", "test"], help="bundled split (default test)")
    else:
        group.add_argument("--train", help="training pairs: TSV/CSV file (.gz ok); default: the bundled ko-en corpus")
        group.add_argument("--dev", help="dev pairs for BLEU-based model selection (default: bundled dev split)")
        group.add_argument("--test", help="test pairs for the final report (default: bundled test split)")
    group.add_argument("--direction", default="ko-en", choices=["ko-en", "en-ko"], help="bundled corpus direction (default ko-en)")
    group.add_argument("--source-column", type=int, default=0, help="source column of your own files (default 0)")
    group.add_argument("--target-column", type=int, default=1, help="target column of your own files (default 1)")
    group.add_argument("--strict", action="store_true", help="fail on malformed lines instead of skipping them with a warning")


def _load_corpus(path, split, args):
    from keras_transformer.data import load_bundled_corpus, read_parallel_file

    if path:
        return read_parallel_file(path, source_column=args.source_column, target_column=args.target_column, strict=args.strict)
    return load_bundled_corpus(split, direction=args.direction)


def load_settings_file(path):
    """Training settings from a YAML or JSON file (a mapping of TrainingConfig keys)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML: {error}") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of training settings, got {type(values).__name__}.")
    return values


def _parse_overrides(pairs):
    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects FIELD=VALUE, got {pair!r}.")
        key, value = pair.split("=", 1)
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def settings_from_args(args):
    from keras_transformer.config import TrainingConfig

    import dataclasses

    values = load_settings_file(args.config) if args.config else {}
    for field in dataclasses.fields(TrainingConfig):
        if "help" in field.metadata and getattr(args, field.name) is not None:
            values[field.name] = getattr(args, field.name)
    if args.set:
        values["model_overrides"] = {**values.get("model_overrides", {}), **_parse_overrides(args.set)}
    return TrainingConfig.from_dict(values)


def cmd_train(args):
    # Settings and data are checked before TensorFlow is imported and before anything is written.
    settings = settings_from_args(args)
    decoding, options = _decoding_from_args(args)
    run_dir = Path(args.runs_dir) / (args.run_name or DEFAULT_RUN_NAME)
    train_corpus = _load_corpus(args.train, "train", args)
    dev_corpus = _load_corpus(args.dev, "dev", args)
    from keras_transformer.runtime import enable_xla_fusion
    from keras_transformer.training import train

    enable_xla_fusion(settings)  # before the strategy: TensorFlow reads its XLA flags once, when it first looks at devices
    strategy = None
    if args.strategy != "default":
        from keras_transformer.distribute import get_strategy

        strategy = get_strategy(args.strategy, tpu=args.tpu)
    print(f"Training on {len(train_corpus):,} pairs, selecting on {len(dev_corpus):,} dev pairs; run directory {run_dir}")
    report = train(settings, run_dir, train_corpus, dev_corpus, strategy=strategy)
    print(f"Trained {report['steps']} steps in {report['training_seconds'] / 60:.1f} min; best dev BLEU {report['best_dev_bleu']}.")
    if strategy is not None:
        from keras_transformer.distribute import is_chief

        if not is_chief(strategy):
            return 0  # the chief evaluates
    if args.no_evaluate:
        return 0
    from keras_transformer.evaluation import evaluate
    from keras_transformer.translator import Translator

    translator = Translator.load(run_dir)
    run = _run_dir_of(run_dir)
    # The user's own test file; with only a dev file of their own, that one (the scores are then optimistic: it
    # chose the best epoch); else the bundled test split.
    split = "dev" if args.dev and not args.test else "test"
    test_corpus = dev_corpus if split == "dev" else _load_corpus(args.test, "test", args)
    result = evaluate(translator, test_corpus, run.eval_dir(split), decoding=decoding, **options)
    placeholders = result["placeholders"]
    kept = f"; placeholders kept in {placeholders['hypothesis_percent']}% of {placeholders['with_placeholders']} sentences with any" if placeholders["with_placeholders"] else ""
    how = decoding + "".join(f", {k} {v}" for k, v in options.items())
    print(f"{split.capitalize()} BLEU {result['bleu']} (case-insensitive {result['bleu_case_insensitive']}), chrF {result['chrf']} "
          f"on {result['sentences']} sentences ({how}){kept}; details in {run.eval_dir(split)}")
    # Sample translations from the user's own data when given; the lecture's sentence only for the bundled ko-en.
    own = args.test or args.dev or args.train
    samples = test_corpus.sources[:5] if own or args.direction != "ko-en" else [LECTURE_SENTENCE] + test_corpus.sources[:4]
    for source, output in zip(samples, translator.translate(samples, decoding=decoding, **options)):
        print(f"  {source}\n    -> {output}")
    return 0


def cmd_evaluate(args):
    from keras_transformer.evaluation import evaluate

    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}.")
    decoding, options = _decoding_from_args(args)
    corpus = _load_corpus(args.data, args.split, args)
    from keras_transformer.translator import Translator

    translator = Translator.load(args.model, decode_precision=args.precision)
    out = args.out or _run_dir_of(args.model).eval_dir(Path(args.data).stem if args.data else args.split)
    report = evaluate(translator, corpus, out, batch_size=args.batch_size, decoding=decoding, **options)
    print(json.dumps({k: v for k, v in report.items() if k != "examples"}, indent=2, ensure_ascii=False))
    return 0


def _run_dir_of(model_path):
    from keras_transformer.run_directory import RunDirectory

    path = Path(model_path)
    return RunDirectory(path.parent if path.suffix == ".keras" else path)


def _read_sentences(args):
    if args.text:
        return list(args.text)
    if args.file:
        path = Path(args.file)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist.")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}).") from None
    else:
        if sys.stdin.isatty():
            print("Type sentences, one per line; end with Ctrl-D.", file=sys.stderr)
        lines = sys.stdin.read().splitlines()
    sentences = [line.strip() for line in lines if line.strip()]
    if not sentences:
        raise ValueError("Nothing to translate: give sentences as arguments, with --file, or on stdin.")
    return sentences


def cmd_translate(args):
    decoding, options = _decoding_from_args(args)
    sentences = _read_sentences(args)
    from keras_transformer.translator import Translator, load_translator

    translator = load_translator(args.model, decode_precision=args.precision)
    if type(translator).__name__ == "CTranslate2Translator":  # greedy or beam search
        if decoding == "sample":
            raise ValueError("The CTranslate2 runner decodes greedily or with beam search (--beam-size); sampling needs a run directory.")
        outputs = translator.translate(sentences, batch_size=args.batch_size, **options)
    elif not isinstance(translator, Translator):  # SavedModel and TFLite artefacts decode greedily
        if decoding != "greedy":
            raise ValueError("Exported models (SavedModel, TFLite) decode greedily: use a run directory for beam search or sampling.")
        outputs = translator.translate(sentences)
    else:
        outputs = translator.translate(sentences, decoding=decoding, batch_size=args.batch_size, **options)
    for output in outputs:
        print(output)
    return 0


def cmd_export(args):
    from keras_transformer.translator import Translator

    translator = Translator.load(args.model)
    if args.format == "saved_model":
        from keras_transformer.export.saved_model import export_saved_model

        path = export_saved_model(translator, args.out, args.model_name, args.version, ids_only=args.ids_only)
    elif args.format == "tflite":
        from keras_transformer.export.tflite import export_tflite

        path = export_tflite(translator, Path(args.out) / f"{args.model_name}.tflite", quantize=args.quantize)
    else:
        from keras_transformer.export.ctranslate2 import export_ctranslate2

        path = export_ctranslate2(translator, Path(args.out) / f"{args.model_name}-ctranslate2", quantize=args.quantize)
    print(f"Exported {path}")
    return 0


def cmd_average(args):
    from keras_transformer.averaging import average_checkpoints

    path = average_checkpoints(args.model, last=args.last, out=args.out)
    print(f"Wrote {path}")
    return 0


def cmd_upgrade(args):
    import warnings

    from keras_transformer.run_directory import RunDirectory, load_seq2seq_lm, save_inference_model

    run = RunDirectory(args.model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*written by keras-transformer 0.1")
        model = load_seq2seq_lm(run.path)
    with run.lock():
        save_inference_model(model, run.best_model_path)
    print(f"Wrote {run.best_model_path}: a TransformerSeq2SeqLM with its tokenizers.")
    return 0


def cmd_plot(args):
    from keras_transformer import plotting

    run = _run_dir_of(args.model) if args.model else None
    out = Path(args.out or (run.plots_dir() if run else "plots"))
    needs_model = args.what in ("attention", "schedule", "curves", "all")
    if needs_model and not args.model:
        raise ValueError(f"plot {args.what} needs --model (a run directory).")
    written = []
    if args.what in ("positional-encoding", "all"):
        written.append(plotting.plot_positional_encoding(64, 256, out / "positional_encoding.png"))
    if args.what in ("schedule", "all"):
        from keras_transformer.schedules import WarmupSchedule

        values = run.read_config()
        training, model = values["training"], values["model"]
        schedule = WarmupSchedule(model["d_model"], training["warmup_steps"], training["lr_scale"])
        written.append(plotting.plot_learning_rate(schedule, max(3 * training["warmup_steps"], 1000), out / "learning_rate.png"))
    if args.what in ("curves", "all"):
        history = run.read_history()
        keys = sorted({k for entry in history for k in entry})
        written.append(plotting.plot_training_curves({k: [e.get(k) for e in history] for k in keys}, out / "training_curves.png"))
    if args.what in ("attention", "all"):
        from keras_transformer.translator import Translator

        translator = Translator.load(args.model)
        target = args.target or translator.translate(args.sentence)
        written += plotting.plot_attention_for_sentence(translator, args.sentence, target, out, layer=args.layer)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
