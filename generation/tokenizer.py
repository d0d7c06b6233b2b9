"""An offline CLIP tokenizer whose vocabulary the project writes itself.

The real SD tokenizer (openai/clip-vit-large-patch14) cannot be downloaded here, and the ``tiny`` model only
needs *a* real byte-level BPE tokenizer with CLIP's conventions: ``<|startoftext|>``/``<|endoftext|>``,
``</w>`` word ends, lower-casing, 77 positions. We write ``vocab.json`` and ``merges.txt`` (the 256
byte-unicode symbols, their ``</w>`` variants, merges learned from a small built-in English word list) and
load them with transformers' ``CLIPTokenizer``; it can encode any text (every byte has a symbol).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

MODEL_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
NUM_MERGES = 1200
_FORMAT_VERSION = "1"

# Words that show up in image prompts; the BPE merges are learned from these (more frequent ones repeated).
_WORD_TEXT = """
a an the of and with in on at by for to from into over under near behind above below portrait photo photograph
painting drawing illustration sketch render rendering art artwork digital oil watercolor canvas style by artist
detailed highly intricate beautiful cinematic lighting light dramatic soft volumetric golden hour sunset sunrise
night day morning evening sky cloud clouds sun moon star stars galaxy space planet mountain mountains river lake
sea ocean beach forest tree trees flower flowers garden field grass desert snow winter summer autumn spring rain
city street building buildings house castle tower bridge road car train ship boat robot cyberpunk steampunk
fantasy science fiction futuristic ancient medieval modern vintage retro realistic photorealistic hyperrealistic
octane unreal engine trending artstation concept character man woman girl boy child old young person people face
eyes hair smile dog cat bird horse dragon wolf fox lion tiger bear fish owl red orange yellow green blue purple
pink black white gray grey brown gold silver colorful vibrant dark bright neon pastel high quality resolution
sharp focus bokeh depth field wide angle close up macro shot lens camera canon nikon sony mm f 4k 8k hd uhd
masterpiece best worst low blurry ugly deformed bad anatomy extra fingers hands text watermark signature cropped
jpeg artifacts noise grain simple background studio professional elegant epic huge tiny small big large little
standing sitting walking running flying floating wearing holding looking reading eating playing dancing
glowing shining burning frozen wet reflection reflections shadow shadows fog mist smoke fire water ice stone wood
metal glass crystal paper cute scary happy sad angry peaceful calm magical mystical surreal abstract minimalist
anime manga cartoon comic pixel low poly isometric 3d 2d vector logo icon poster cover wallpaper scene landscape
cityscape interior exterior room window door table chair bed book cup coffee tea food cake apple banana
astronaut knight wizard witch princess king queen warrior samurai ninja pirate soldier monster alien ghost zombie
"""
_WORDS = _WORD_TEXT.split()
_FREQUENT_TEXT = "a the of and with in on by photo portrait painting detailed highly beautiful lighting style art " \
    "quality"
_FREQUENT = set(_FREQUENT_TEXT.split())


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map (so BPE never sees raw control bytes)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _learn_merges(words: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE training (most frequent adjacent pair first) on byte-unicode symbols, ``</w>`` on the last."""
    byte_map = _bytes_to_unicode()
    counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    for word in words:
        symbols = [byte_map[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        counts[tuple(symbols)] += 8 if word in _FREQUENT else 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for symbols, n in counts.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += n
        if not pairs:
            break
        # Ties broken by the pair itself so the vocabulary is identical on every machine.
        best = max(pairs.items(), key=lambda item: (item[1], item[0]))[0]
        merges.append(best)
        merged: collections.Counter[tuple[str, ...]] = collections.Counter()
        for symbols, n in counts.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += n
        counts = merged
    return merges


def build_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (bytes, bytes+``</w>``, merged symbols, then the two special tokens) and the merges."""
    base = list(_bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base]
    merges = _learn_merges(_WORDS, NUM_MERGES)
    seen = set(tokens)
    for left, right in merges:
        if left + right not in seen:
            seen.add(left + right)
            tokens.append(left + right)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_tokenizer_files(directory: str | os.PathLike[str]) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (CLIP's file formats) into *directory*."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2 - written by imagine-bot generation/tokenizer.py"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def cache_root() -> Path:
    """Files the project generates (tokenizer, tiny's config folder): ``$IMAGINE_BOT_CACHE`` or a per-user temp
    folder. Everything in it can be deleted at any time; it is rebuilt on demand."""
    user = getattr(os, "getuid", lambda: "user")()
    return Path(os.environ.get("IMAGINE_BOT_CACHE") or os.path.join(tempfile.gettempdir(), f"imagine-bot-{user}"))


def _cache_dir() -> Path:
    """The tokenizer folder, keyed by the word list and format version so a change never reads stale files."""
    digest = hashlib.sha256((_FORMAT_VERSION + " ".join(_WORDS) + str(NUM_MERGES)).encode()).hexdigest()[:12]
    return cache_root() / f"clip-tokenizer-{digest}"


@lru_cache(maxsize=1)
def _tokenizer_dir() -> Path:
    target = _cache_dir()
    if not (target / "merges.txt").exists():
        # Write into a sibling temp folder and rename, so concurrent processes never read half a file.
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tok-"))
        write_tokenizer_files(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; its files are identical
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
    return target


def build_offline_clip_tokenizer() -> CLIPTokenizer:
    """A real ``CLIPTokenizer`` (77 tokens, pad = ``<|endoftext|>``) built without any download."""
    directory = _tokenizer_dir()
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    merge_lines = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split(" ")) for line in merge_lines if line]
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
    )


def prompt_token_count(tokenizer: CLIPTokenizer, prompt: str) -> int:
    """Tokens the prompt needs including ``<|startoftext|>`` and ``<|endoftext|>`` (no truncation)."""
    return len(tokenizer(prompt, truncation=False, add_special_tokens=True, verbose=False)["input_ids"])


def is_truncated(tokenizer: CLIPTokenizer, prompt: str) -> bool:
    """True when the text encoder will only see the first ``model_max_length`` tokens of *prompt*."""
    return prompt_token_count(tokenizer, prompt) > tokenizer.model_max_length
