"""`keras-transformer demo`: its arguments and the command function (cli.py only wires them in).

Nothing heavy is imported here: aiohttp and TensorFlow load when the command runs, so `--help` answers at once.
"""

from __future__ import annotations

import ipaddress
import sys

DEMO_HELP = "a local web page: translate, and look at attention, positional encoding, schedule and curves"
DEMO_DESCRIPTION = (
    "Serves a page (no network needed: every script, style and font comes from installed packages) that "
    "translates a sentence with greedy, beam or sampling decoding and shows the translation's attention weights "
    "per layer and head, the positional-encoding table, the learning-rate schedule and the training curves of a "
    "run directory. Binds to 127.0.0.1 unless --host says otherwise; see docs/demo.md."
)


def add_demo_arguments(parser):
    """Adds the demo's arguments to an argparse (sub)parser and makes `cmd_demo` its function."""
    from keras_transformer.cli import LECTURE_SENTENCE

    parser.add_argument("--model", required=True, help="run directory (saved_models/<run-name>)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--sentence", default=LECTURE_SENTENCE, help="sentence the source box starts with (default: the lecture's)")
    parser.set_defaults(func=cmd_demo)
    return parser


def cmd_demo(args):
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}.")
    if not _is_loopback(args.host):
        print(f"warning: --host {args.host} makes the demo reachable from other machines; it has no login.", file=sys.stderr)
    from keras_transformer.demo.app import run_demo
    from keras_transformer.demo.model_access import DemoModel

    print(f"Loading {args.model} ...")
    model = DemoModel.load(args.model)
    try:
        run_demo(model, host=args.host, port=args.port, default_sentence=args.sentence)
    except OSError as error:  # port taken, address not on this machine: one line, not a traceback
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}") from None
    return 0


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
