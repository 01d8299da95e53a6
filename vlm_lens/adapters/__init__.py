"""Where the shared code gets an architecture's adapter record (a facade over the registry).

The records themselves live with the rest of each architecture's knowledge, one file per
architecture in :mod:`vlm_lens.architectures`; this package keeps the names the library and
its users import (`Adapter`, `adapter_for`, `get_module`, `ADAPTERS`, `SUPPORTED`).

Not for: declaring an architecture (add a file to `vlm_lens.architectures`).
"""

from __future__ import annotations

from vlm_lens.architectures import ARCHITECTURES, REGISTRY, Adapter, adapter_for, get_module

__all__ = ["ADAPTERS", "SUPPORTED", "Adapter", "adapter_for", "get_module"]

#: The adapter record of every supported architecture, by key.
ADAPTERS: dict[str, Adapter] = {key: arch.adapter for key, arch in REGISTRY.items()}
SUPPORTED: tuple[str, ...] = ARCHITECTURES
