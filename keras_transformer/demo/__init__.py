"""`keras-transformer demo`: a local web page for students to translate a sentence and look inside the model.

- `command`: `add_demo_arguments(parser)` and `cmd_demo(args)` for the command line.
- `app`: the aiohttp application (`create_app`), `DemoServer` (background thread) and `run_demo`.
- `model_access`: `DemoModel`, the only module that calls into the translator and the model.
- `validation`: checks of the JSON requests (400 answers that name the bad field).
- `static/`: the page (HTML, JS, CSS); plotly.js and the NanumGothic font come from installed packages.

Importing this package stays light (no aiohttp, no TensorFlow) so that `keras-transformer --help` is instant.
"""

from keras_transformer.demo.command import DEMO_DESCRIPTION, DEMO_HELP, add_demo_arguments, cmd_demo

__all__ = ["DEMO_DESCRIPTION", "DEMO_HELP", "add_demo_arguments", "cmd_demo"]
