"""Names a package offers but imports only on first use, so that `import keras_transformer` (and the command line's
`--help`) does not import TensorFlow. Each package's `__init__.py` lists its names and gets its module-level
`__getattr__` / `__dir__` (PEP 562) from `lazy_attributes`."""

import importlib


def lazy_attributes(package, namespace, exports, submodules=()):
    """`(__getattr__, __dir__)` for the package named `package` whose module dict is `namespace`: a name in
    `exports` (`{name: module path}`) is read from its module, a name in `submodules` is imported as
    `package.name`; anything else is an AttributeError naming the package."""
    submodules = set(submodules)

    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(exports) | submodules)

    return __getattr__, __dir__
