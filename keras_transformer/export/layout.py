"""TF Serving's directory layout, `<export_dir>/<model_name>/<version>/`, in one place (no TensorFlow import):
the exporter picks the next version, the server and the loaders pick the highest complete one."""

from __future__ import annotations

from pathlib import Path


def find_versions(model_base_path) -> list[int]:
    """The loadable versions under `model_base_path` (TF Serving's layout `<model_base_path>/<version>/`):
    positive numeric folder names holding a `saved_model.pb`, ascending. Anything else (an exporter's hidden
    staging folder, a half-copied version without `saved_model.pb`) is ignored, as TF Serving does."""
    base = Path(model_base_path)
    if not base.is_dir():
        raise FileNotFoundError(f"model base path {base} does not exist or is not a directory.")
    versions = []
    for path in base.iterdir():
        if path.is_dir() and path.name.isdigit() and int(path.name) > 0 and (path / "saved_model.pb").is_file():
            versions.append(int(path.name))
    return sorted(versions)


def latest_version(model_base_path) -> int:
    """The highest loadable version under `model_base_path`; FileNotFoundError (with a hint) when none."""
    versions = find_versions(model_base_path)
    if versions:
        return versions[-1]
    base = Path(model_base_path)
    hint = ""
    nested = sorted(p.name for p in base.iterdir() if p.is_dir() and _find_versions_quiet(p))
    if nested:
        hint = (
            f" It holds model folder(s) {', '.join(nested)}: point --model-base-path at one of them, e.g. "
            f"{base / nested[0]}."
        )
    elif (base / "saved_model.pb").is_file():
        hint = (
            f" {base} is itself a SavedModel: TF Serving's layout wants it in a numeric version folder, "
            f"--model-base-path {base.parent} if it is named like a version."
        )
    raise FileNotFoundError(
        f"no model version under {base}: expected <model_base_path>/<version>/saved_model.pb, as written by "
        f"`export_saved_model(translator, export_dir)` into <export_dir>/<model_name>/<version>/.{hint}"
    )


def _find_versions_quiet(path) -> list[int]:
    try:
        return find_versions(path)
    except OSError:
        return []


def next_version(model_dir) -> int:
    """TF Serving serves the highest numeric version: the next one is 1 + the highest present."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return 1
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def resolve_version_dir(path) -> Path:
    """A SavedModel directory: `path` itself when it holds `saved_model.pb`, else its highest complete version."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    return path / str(latest_version(path))
