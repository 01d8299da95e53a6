"""The one check every dataset loader applies to a path read from an annotation file.

Annotation files (JSON, JSONL, parquet path cells, the listing of a downloaded folder)
come from the internet. A name in one of them that is absolute, climbs out with `..`,
or is a symlink would otherwise let the file feed any picture on the machine to the
model. `confined` refuses every path that does not resolve, symlinks followed, inside
the folder it was looked up in, unless the caller opts out with
`allow_outside_root=True` (images kept elsewhere on purpose).

Not for: finding or decoding files (the loaders; `vlm_lens.data.images`).
"""

from __future__ import annotations

from pathlib import Path


class OutsideRootError(ValueError):
    """A path from an annotation file that leads outside its dataset folder."""


def confined(
    path: Path, root: Path, dataset: str, where: str, allow_outside_root: bool = False
) -> Path:
    """`path` itself, once it is known to resolve inside `root`; else `OutsideRootError`
    naming `dataset`, `where` (the annotation file and record) and the path."""
    if allow_outside_root:
        return path
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise OutsideRootError(
            f"{dataset}: path {str(path)!r} in {where} resolves to {resolved}, "
            f"outside the dataset folder {root}; refused, since annotation files come from "
            "the internet. Pass allow_outside_root=True if you keep the files elsewhere "
            "on purpose."
        )
    return path


__all__ = ["OutsideRootError", "confined"]
