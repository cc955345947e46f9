"""`ModelManager`: which version is served, as TF Serving's "latest" version policy does it.

It serves the newest complete version under the model base path, polls the base path, loads a newer (or, when
the served one disappears, the next older) version in the background, warms it up, then switches to it: a
request already holding the old version finishes on it, new ones get the new one, and the old version is
unloaded once the last request using it is done (it is dropped here; Python frees it with its last reference).
A version that fails to load is logged and skipped until its files change; the served version stays.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from keras_transformer.export.layout import find_versions, latest_version
from keras_transformer.serving.errors import ServingError

logger = logging.getLogger(__name__)


def is_complete(version_dir) -> bool:
    """A version folder is loaded only when its SavedModel is whole: `saved_model.pb` and the variables index
    (written last by `tf.saved_model.save`; `export_saved_model` also renames a finished export into place)."""
    version_dir = Path(version_dir)
    return (version_dir / "saved_model.pb").is_file() and (version_dir / "variables" / "variables.index").is_file()


def complete_versions(model_base_path) -> list[int]:
    """The numeric versions under `model_base_path` whose SavedModel is complete, ascending."""
    return [v for v in find_versions(model_base_path) if is_complete(Path(model_base_path) / str(v))]


def newest_complete_version(model_base_path) -> int:
    """The version to serve; FileNotFoundError with a hint when there is none."""
    versions = complete_versions(model_base_path)
    if versions:
        return versions[-1]
    partial = find_versions(model_base_path)
    if partial:
        raise FileNotFoundError(f"no complete model version under {model_base_path}: version(s) "
                                f"{', '.join(map(str, partial))} have no variables/variables.index (still being "
                                "written?).")
    latest_version(model_base_path)  # raises FileNotFoundError with a hint about the layout
    raise AssertionError("unreachable")


class ModelManager:
    """Loads and switches versions of one model. `servable(name, version)` is what requests use.

    Args:
        model_base_path: `<export_dir>/<model_name>`.
        model_name: the name requests must use.
        poll_wait_s: seconds between looks at the base path; 0 loads once and never polls.
        warmup: run each signature once before a version is served.
        on_switch: called with the new `LoadedModel` after each switch (and after the first load).
    """

    def __init__(self, model_base_path, model_name="translator", poll_wait_s=1.0, warmup=True, on_switch=None):
        self.base_path = Path(model_base_path)
        self.model_name = model_name
        self.poll_wait_s = float(poll_wait_s)
        self._warmup = warmup
        self._on_switch = on_switch or (lambda model: None)
        self._failed = {}  # version -> file signature of the attempt that failed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        version = newest_complete_version(self.base_path)
        try:
            self._current = self._load(version)
        except Exception as error:  # noqa: BLE001 - one clear message, whatever TensorFlow raised
            raise ValueError(f"cannot load {self.base_path / str(version)}: {type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''}") from None
        self._on_switch(self._current)
        self._thread = None
        if self.poll_wait_s > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="keras-transformer-poller", daemon=True)
            self._thread.start()

    @property
    def current(self):
        return self._current

    def servable(self, name, version=None, label=None):
        """The loaded model a request for `name` (and `version`, an int, if given) goes to; 404 otherwise."""
        model = self._current
        if label is not None:
            raise ServingError(404, f"Servable not found for request: Labeled({name}, {label}): version labels "
                                    "are not configured on this server.")
        if name != self.model_name or (version is not None and version != model.version):
            spec = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise ServingError(404, f"Servable not found for request: {spec} (serving {self.model_name} version "
                                    f"{model.version}).")
        return model

    def _load(self, version):
        from keras_transformer.serving.loaded_model import LoadedModel

        return LoadedModel(self.base_path / str(version), self.model_name, version, warmup=self._warmup)

    def _files_signature(self, version):
        path = self.base_path / str(version)
        return tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in
                     (path / "saved_model.pb", path / "variables" / "variables.index"))

    def poll_once(self) -> bool:
        """Looks at the base path once; loads and switches to the version to serve if it changed. True if it
        switched."""
        try:
            versions = complete_versions(self.base_path)
        except OSError as error:
            logger.warning("cannot list %s: %s; still serving version %d", self.base_path, error,
                           self._current.version)
            return False
        wanted = next((v for v in reversed(versions) if self._failed.get(v) != self._try_signature(v)), None)
        if wanted is None or wanted == self._current.version:
            return False
        logger.info("loading %s version %d", self.model_name, wanted)
        try:
            model = self._load(wanted)
        except Exception as error:  # noqa: BLE001 - a bad export must not stop the server
            self._failed[wanted] = self._try_signature(wanted)
            logger.error("cannot load %s: %s: %s; still serving version %d", self.base_path / str(wanted),
                         type(error).__name__, str(error).splitlines()[0] if str(error) else "",
                         self._current.version)
            return False
        with self._lock:
            old, self._current = self._current, model
        self._on_switch(model)
        logger.info("serving %s version %d; unloaded version %d", self.model_name, model.version, old.version)
        return True

    def _try_signature(self, version):
        try:
            return self._files_signature(version)
        except OSError:
            return None

    def _poll_loop(self):
        while not self._stop.wait(self.poll_wait_s):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the poller must survive anything the file system does
                logger.exception("version poll failed")

    def close(self, timeout=10.0):
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


__all__ = ["ModelManager", "complete_versions", "is_complete", "newest_complete_version"]
