"""Train a translator through the Python API, the way your own script would.

Same as `keras-transformer train` with its defaults: the `small` preset on the bundled ko-en corpus, then a
test-set evaluation and a few translations. Change the settings below, or pass --quick for a smoke run of 40 steps.

    python scripts/train.py [--quick] [--run-dir saved_models/ko-en-small-api]
"""

import argparse

from keras_transformer.data import load_bundled_corpus
from keras_transformer.evaluation import evaluate
from keras_transformer.training import TrainingConfig, train
from keras_transformer.translator import Translator


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="saved_models/ko-en-small-api")
    parser.add_argument("--quick", action="store_true", help="tiny model, 3,000 pairs, 40 steps: checks the plumbing")
    args = parser.parse_args()

    settings = TrainingConfig(preset="small", time_limit_minutes=25)
    if args.quick:
        settings = TrainingConfig(
            preset="tiny", train_limit=3000, source_vocab_size=2000, target_vocab_size=1500,
            steps_per_epoch=20, epochs=2, time_limit_minutes=1, dev_bleu_sentences=20, warmup_steps=40, lr_scale=0.1,
            max_length=32,
        )
    train_corpus = load_bundled_corpus("train", direction="ko-en")
    dev_corpus = load_bundled_corpus("dev", direction="ko-en")
    report = train(settings, args.run_dir, train_corpus, dev_corpus)
    print(f"{report['steps']} steps in {report['training_seconds'] / 60:.1f} min, best dev BLEU {report['best_dev_bleu']}")

    translator = Translator.load(args.run_dir)
    test_corpus = load_bundled_corpus("test")
    if args.quick:
        test_corpus = test_corpus.head(40)
    result = evaluate(translator, test_corpus, f"{args.run_dir}/eval-test")
    print(f"test BLEU {result['bleu']}, chrF {result['chrf']}")
    for source in ["어제 카페 갔었어 거기 사람 많더라", "파일을 열 수 없습니다."]:
        print(source, "->", translator.translate(source))


if __name__ == "__main__":
    main()
