"""Names of a package that load on first use (PEP 562), so importing the package stays cheap.

Used by `vlm_lens`, `vlm_lens.core` and `vlm_lens.zoo`, whose public names live in modules
that import torch and transformers (seconds and most of a gigabyte): `import vlm_lens` and
`vlm-lens --help` should not pay that.

Not for: hiding import circles (tests/test_architecture.py forbids them whether the import is
at the top or inside a function).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    package: str, homes: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package` whose name `n` is defined in module `homes[n]`.

    A name whose home is the submodule `package.n` itself is that submodule. A loaded name is
    stored in the package's namespace, so the second access is an ordinary attribute.
    """
    module = importlib.import_module(package)
    if set(getattr(module, "__all__", homes)) != set(homes):
        raise ImportError(f"{package}: __all__ and the lazily loaded names differ")

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(home)
        value = loaded if home == f"{package}.{name}" else getattr(loaded, name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(homes))

    return __getattr__, __dir__
