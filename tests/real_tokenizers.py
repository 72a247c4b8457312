"""Real tokenizers for tests, built offline from data files that PyPI packages ship.

- SD-1.4's text-encoder tokenizer (openai/clip-vit-large-patch14, as in
  CompVis/stable-diffusion-v1-4): OpenAI's CLIP BPE merges `clip/bpe_simple_vocab_16e6.txt.gz`
  from `clip-anytorch==2.6.0` (MIT licence, OpenAI).
- Llama-3.2-Vision's (Mllama) tokenizer: the Llama-3 byte-level BPE rank table
  `quicktok/data/llama3.vocab` and `llama3.special` from `quicktok-v1==0.4.0`. The Llama-3 data
  is under the Meta Llama 3 Community License; it is used here as test data only.
- Qwen2-VL's tokenizer: `quicktok/data/qwen3.vocab` and `qwen3.special` from the same package
  (Qwen's vocabulary, Apache-2.0; Qwen3 keeps Qwen2's 151643 ranks and special ids).

The files are read from the installed packages, never copied into the repository; nothing of
the packages is imported. They are installed without their dependencies (`./run.sh setup`):

    pip install --no-deps clip-anytorch==2.6.0 quicktok-v1==0.4.0

A missing package is an error that names that command (CI installs them), never a skip.

The tokenizers are rebuilt the way transformers' converters build the hub's `tokenizer.json`
files (vocabulary, merges, split regex, special ids). Building one takes a few seconds, so each
is built once per process (`functools.cache`) and saved under
`<tempdir>/lavender_ray_test_tokenizers/<name>-<hash of its data files and RECIPE_VERSION>`; later
processes load that folder in about a second. The objects returned are shared: do not mutate.

quicktok's formats (little-endian): `.vocab` is a u32 count, then per token a u16 length, the
token's bytes and its u32 rank; `.special` is a u32 count, then per token its u32 id, a u16
length and the UTF-8 name.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata
import json
import os
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from transformers import CLIPTokenizer, PreTrainedTokenizerFast

INSTALL = "pip install --no-deps clip-anytorch==2.6.0 quicktok-v1==0.4.0"
RECIPE_VERSION = "1"  # bump when a build below changes: it invalidates the disk cache
CACHE_ROOT = Path(tempfile.gettempdir()) / "lavender_ray_test_tokenizers"

# Pre-tokenizer split regexes, verbatim from the hub's tokenizer.json files.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama-3.1+/3.2 names of special ids that quicktok's Llama-3.0 table calls reserved (Meta's
# llama-models tokenizer; transformers' mllama weight converter), and Mllama's image token.
LLAMA32_NAMES = {
    128004: "<|finetune_right_pad_id|>",
    128005: "<|step_id|>",
    128008: "<|eom_id|>",
    128010: "<|python_tag|>",
    128256: "<|image|>",
}
QWEN2_VL_LAST_SPECIAL = 151656  # <|video_pad|>; later ids are Qwen2.5/Qwen3 additions
CLIP_VOCAB_SIZE = 49408
BYTE_LEVEL = {
    "type": "ByteLevel",
    "add_prefix_space": False,
    "trim_offsets": False,
    "use_regex": False,
}


@functools.cache
def clip_tokenizer() -> Any:
    """SD-1.4's tokenizer: lower-cases, bos 49406, eos = pad = 49407, 77-token window, offsets."""
    bpe = _package_file("clip-anytorch", "clip/bpe_simple_vocab_16e6.txt.gz")
    folder = _cached_folder(f"clip-sd14-{_digest(bpe)}", lambda out: _write_clip(bpe, out))
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    _check_special_ids(tokenizer, {"<|startoftext|>": 49406, "<|endoftext|>": 49407})
    return tokenizer


@functools.cache
def llama3_tokenizer() -> Any:
    """Llama-3.2-Vision's tokenizer: 128000 ranks; bos <|begin_of_text|> (128000) added in front
    of every encoding, eos <|eot_id|> (128009), pad <|finetune_right_pad_id|> (128004), <|image|>
    128256."""
    data = _package_file("quicktok-v1", "quicktok/data")
    vocab, special = data / "llama3.vocab", data / "llama3.special"
    specials = _llama32_specials(special)

    def spec() -> dict[str, Any]:
        tokens = _read_quicktok_vocab(vocab, expected=128000)
        spec = _byte_level_spec(tokens, _merges_all_splits(tokens), specials, LLAMA3_PATTERN)
        spec["model"]["ignore_merges"] = True
        spec["post_processor"] = _bos_processor("<|begin_of_text|>", specials["<|begin_of_text|>"])
        return spec

    return _byte_level_tokenizer(
        f"llama3-vision-{_digest(vocab, special)}",
        spec,
        specials,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        model_max_length=131072,
    )


@functools.cache
def qwen2_tokenizer() -> Any:
    """Qwen2-VL's tokenizer: 151643 ranks, NFC, single-digit split, no bos; pad <|endoftext|>
    (151643), eos <|im_end|> (151645), <|image_pad|> 151655."""
    data = _package_file("quicktok-v1", "quicktok/data")
    vocab, special = data / "qwen3.vocab", data / "qwen3.special"
    specials = _read_quicktok_special(special)
    if specials.get("<|endoftext|>") != 151643 or specials.get("<|video_pad|>") != 151656:
        raise ValueError(f"{special}: not Qwen2's special-token table")
    specials = {name: i for name, i in specials.items() if i <= QWEN2_VL_LAST_SPECIAL}

    def spec() -> dict[str, Any]:
        tokens = _read_quicktok_vocab(vocab, expected=151643)
        spec = _byte_level_spec(tokens, _merges_one_per_token(tokens), specials, QWEN2_PATTERN)
        spec["normalizer"] = {"type": "NFC"}
        return spec

    return _byte_level_tokenizer(
        f"qwen2-vl-{_digest(vocab, special)}",
        spec,
        specials,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )


def _byte_level_tokenizer(
    key: str, spec: Callable[[], dict[str, Any]], specials: dict[str, int], **settings: Any
) -> Any:
    """The fast tokenizer of the tokenizer.json `spec()` with `settings` (special tokens, window),
    built once into the cache folder `key` and loaded from there."""

    def write(out: Path) -> None:
        backend = Tokenizer.from_str(json.dumps(spec()))
        fast = PreTrainedTokenizerFast(
            tokenizer_object=backend, clean_up_tokenization_spaces=False, **settings
        )
        fast.save_pretrained(str(out))

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(_cached_folder(key, write)))
    _check_special_ids(tokenizer, specials)
    return tokenizer


def _package_file(distribution: str, relative: str) -> Path:
    """A file or folder shipped by an installed distribution; a clear error when it is absent."""
    try:
        path = Path(importlib.metadata.distribution(distribution).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.exists():
        raise FileNotFoundError(
            f"{relative} not found: the real-tokenizer tests read it from the {distribution} "
            f"package; install the test data packages with `{INSTALL}` (./run.sh setup does)"
        )
    return path


def _digest(*paths: Path) -> str:
    digest = hashlib.sha256(RECIPE_VERSION.encode())
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def _cached_folder(key: str, write: Callable[[Path], None]) -> Path:
    """CACHE_ROOT/key, created by `write(folder)` if missing (atomically: a temporary folder
    renamed, so concurrent test processes never see half a tokenizer)."""
    final = CACHE_ROOT / key
    if (final / ".complete").exists():
        return final
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    staging = CACHE_ROOT / f".{key}.{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        write(staging)
        (staging / ".complete").write_text("ok\n")
        try:
            os.replace(staging, final)
        except OSError:  # another process renamed its folder first; it is the same
            if not (final / ".complete").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _check_special_ids(tokenizer: Any, specials: dict[str, int]) -> None:
    for name, expected in specials.items():
        got = tokenizer.convert_tokens_to_ids(name)
        if got != expected:
            raise AssertionError(f"special token {name!r} has id {got}, expected {expected}")


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's byte -> printable character table of byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = list(printable)
    n = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + n)
            n += 1
    return {byte: chr(c) for byte, c in zip(printable, chars)}


# ------------------------------------------------------------------------------------ CLIP
def _write_clip(bpe: Path, out: Path) -> None:
    """vocab.json, merges.txt and the tokenizer config of CompVis/stable-diffusion-v1-4's
    tokenizer folder, as OpenAI's simple_tokenizer.py builds them from the merges file."""
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    ids = {token: i for i, token in enumerate(vocab)}
    if len(ids) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{bpe}: {len(ids)} tokens, expected {CLIP_VOCAB_SIZE}")
    (out / "vocab.json").write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "\n".join(merges) + "\n"
    (out / "merges.txt").write_text(merges_text, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    # tokenizer.json lets later loads skip converting vocab.json + merges.txt
    CLIPTokenizer.from_pretrained(str(out)).backend_tokenizer.save(str(out / "tokenizer.json"))


# ------------------------------------------------------------------------ Llama-3 and Qwen2
def _read_quicktok_vocab(path: Path, expected: int) -> list[bytes]:
    """The token byte strings of a quicktok `.vocab` file, indexed by rank (dense 0..n-1)."""
    data = path.read_bytes()
    (n,) = struct.unpack_from("<I", data, 0)
    offset = 4
    tokens: list[bytes | None] = [None] * n
    for _ in range(n):
        (length,) = struct.unpack_from("<H", data, offset)
        token = data[offset + 2 : offset + 2 + length]
        (rank,) = struct.unpack_from("<I", data, offset + 2 + length)
        tokens[rank] = token
        offset += 2 + length + 4
    if offset != len(data) or n != expected or any(t is None for t in tokens):
        raise ValueError(f"{path}: not a quicktok vocabulary of {expected} ranks")
    return tokens  # type: ignore[return-value]


def _read_quicktok_special(path: Path) -> dict[str, int]:
    """Special-token name -> id of a quicktok `.special` file."""
    data = path.read_bytes()
    (n,) = struct.unpack_from("<I", data, 0)
    offset = 4
    specials = {}
    for _ in range(n):
        token_id, length = struct.unpack_from("<IH", data, offset)
        specials[data[offset + 6 : offset + 6 + length].decode("utf-8")] = token_id
        offset += 6 + length
    return specials


def _llama32_specials(path: Path) -> dict[str, int]:
    """quicktok's Llama-3.0 special table (ids 128000..128255) renamed as in Llama-3.2-Vision:
    the named ids of LLAMA32_NAMES, reserved tokens renumbered from 2 at 128011, <|image|>."""
    table = _read_quicktok_special(path)
    if table.get("<|begin_of_text|>") != 128000 or len(table) != 256:
        raise ValueError(f"{path}: not Llama-3's special-token table")
    by_id = {i: name for name, i in table.items()}
    by_id.update({i: f"<|reserved_special_token_{i - 128009}|>" for i in range(128011, 128256)})
    by_id.update(LLAMA32_NAMES)
    return {name: i for i, name in by_id.items()}


def _merges_all_splits(tokens: list[bytes]) -> list[tuple[int, int]]:
    """transformers' TikTokenConverter recipe (the hub's Llama-3 tokenizer.json): every split
    (left, right) of a token with both halves in the vocabulary, by the token's rank, then by
    (rank left, rank right). Pairs of ranks."""
    rank = {token: i for i, token in enumerate(tokens)}.get
    merges: list[tuple[int, int]] = []
    for token in tokens:
        pairs = [(rank(token[:i]), rank(token[i:])) for i in range(1, len(token))]
        merges.extend(sorted((a, b) for a, b in pairs if a is not None and b is not None))
    return merges


def _merges_one_per_token(tokens: list[bytes]) -> list[tuple[int, int]]:
    """tiktoken's rank BPE replayed on each token with the ranks below its own: the one merge
    that makes each multi-byte token (the hub's Qwen2 tokenizer.json). Pairs of ranks."""
    ranks = {token: i for i, token in enumerate(tokens)}
    merges = []
    for own, token in enumerate(tokens):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pair_ranks = [ranks.get(a + b, own) for a, b in zip(parts, parts[1:])]
            best = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            if pair_ranks[best] >= own:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {own}) is not made by one merge")
        merges.append((ranks[parts[0]], ranks[parts[1]]))
    return merges


def _byte_level_spec(
    tokens: list[bytes], merges: list[tuple[int, int]], specials: dict[str, int], pattern: str
) -> dict[str, Any]:
    """A tokenizer.json of a byte-level BPE over `tokens` (rank = id) split by `pattern`."""
    table = _bytes_to_unicode()
    names = ["".join(table[b] for b in token) for token in tokens]
    regex = {"Regex": pattern}
    split = {"type": "Split", "pattern": regex, "behavior": "Isolated", "invert": False}
    added = [_special(name, i) for name, i in sorted(specials.items(), key=lambda item: item[1])]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, BYTE_LEVEL]},
        "post_processor": BYTE_LEVEL,
        "decoder": BYTE_LEVEL | {"add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {name: i for i, name in enumerate(names)},
            "merges": [[names[a], names[b]] for a, b in merges],
        },
    }


def _special(name: str, token_id: int) -> dict[str, Any]:
    flags = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
    return {"id": token_id, "content": name, **flags, "special": True}


def _bos_processor(bos: str, bos_id: int) -> dict[str, Any]:
    """Post-processor that puts `bos` in front of every sequence (Llama-3's template)."""
    first = {"SpecialToken": {"id": bos, "type_id": 0}}
    second = {"SpecialToken": {"id": bos, "type_id": 1}}
    a, b = {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}
    template = {
        "type": "TemplateProcessing",
        "single": [first, a],
        "pair": [first, a, second, b],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
    return {"type": "Sequence", "processors": [BYTE_LEVEL, template]}
