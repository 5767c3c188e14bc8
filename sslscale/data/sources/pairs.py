"""Picture-caption sources for corpus.prepare: records of two data fields, an `image` and its caption as `text` ids.

Sources:
- a folder where `x.png` sits beside `x.txt` (any image suffix of sources/images.py; first-level class subfolders
  give labels and a seeded, stratified test split, as image folders do);
- a `.jsonl` file of `{"image": path, "text": caption}` lines, a relative path read from the file's folder;
- `openclipart` (Debian openclipart-png, ~6,900 public-domain pictures in topic folders), for pretraining: a
  picture's title is its file name cleaned into words (`full_moon_dan_gerhards_01.png` -> "full moon dan
  gerhards"), and its caption the title with its topic folders' words ("full moon dan gerhards, science
  astronomy"). A picture whose bytes equal an earlier one's is left out (1,221 of its 8,121 paths are links);
- `tuxpaint_captions` (Debian tuxpaint-stamps-default), the evaluation target: Tux Paint's stamps with the
  human-written names in `<stamp>.txt`, labelled by their category folder (`animals`, `naturalforces`, ...). The
  manifest's label field carries each category as words for prompts (`words`: "natural forces"). A stamp's mirrored
  drawing (`x_mirror.png`) shares `x.txt`'s caption; pictures without a caption are left out. Its test split holds
  whole captions: pictures that share a caption go to one split, a seeded test_fraction of each category's
  captions to test. Its captions are tokenised with openclipart's tokenizer unless `--tokenizer` says otherwise.

A caption is the text file's lines that are not translations (`xx.utf8=...` lines, as Tux Paint writes them),
whitespace collapsed. A built-in's picture that cannot be decoded is left out and listed in the manifest's
`skipped` (openclipart's 15 pictures of over 89 million pixels, PIL's decompression-bomb limit: 0.7 GB each).
Pictures are composited on white where transparent, padded with white to a square (clip art is drawn to its
edges, where a centre crop would cut it) and resized to `image_size` (default 64) in RGB. Captions go through the
text modality's tokenizer (sources/text.py): trained on the train split's captions, or a prepared corpus's with
`--tokenizer` (whose caption length is then the default); a caption is its ids and [SEP], at most `seq_len`
(default 32) of them.
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from sslscale.data.modalities.text import SEP, SPECIAL, TOKENIZER
from sslscale.data.sources.base import Provider, Sample, Source, path_not_taken
from sslscale.data.sources.images import IMAGE_EXTENSIONS
from sslscale.data.sources.text import ids_dtype, load_tokenizer, train_tokenizer
from sslscale.data.splits import folder_files, folder_labels, folder_splits, shuffled, stratified_pick
from sslscale.errors import SslscaleError, reason

OPENCLIPART_DIR = "/usr/share/openclipart/png"
TUXPAINT_DIR = "/usr/share/tuxpaint/stamps"
CATEGORY_WORDS = {"naturalforces": "natural forces"}  # Tux Paint's category folders that are not one word
_TRANSLATION = re.compile(r"^\s*[A-Za-z_@]+\.utf8\s*=")

# one pair before it is written: (picture file, caption, label or None)
Pair = tuple[Path, str, Optional[int]]


def caption_of(data: bytes) -> str:
    """A caption file's text: its lines that are not translations (`xx.utf8=`), whitespace collapsed."""
    text = data.decode("utf-8-sig", errors="replace")
    return " ".join(" ".join(line for line in text.splitlines() if not _TRANSLATION.match(line)).split())


def title_words(path: Path) -> str:
    """A file name as words: `full_moon_dan_gerhards_01.png` -> "full moon dan gerhards", `aiga_escalator1` ->
    "aiga escalator", camelCase split; a trailing number (a variant's) dropped."""
    stem = re.sub(r"[_\-\s]*\d+$", "", path.stem) or path.stem
    stem = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", stem)
    return " ".join(re.sub(r"[_\-.]+", " ", stem).lower().split())


def picture(path: Path, size: int) -> np.ndarray:
    """A picture file -> uint8 (size, size, 3): transparency composited on white, padded with white to a square,
    resized; SslscaleError (one line) when it cannot be decoded."""
    try:
        with warnings.catch_warnings():  # a picture of over ~89 million pixels: PIL's decompression-bomb warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                rgba = im.convert("RGBA")
    except Exception as e:  # PIL raises many exception types for bad files
        raise SslscaleError(f"cannot decode image {path}: {reason(e)}") from None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    side = max(rgb.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


# ---------------------------------------------------------------- the pairs of each source

def _folder_pairs(root: Path):
    """(pairs, classes): every picture with a same-named .txt beside it; class = first-level subfolder."""
    files = [p for p in folder_files(root, IMAGE_EXTENSIONS, "pictures") if p.with_suffix(".txt").is_file()]
    if not files:
        raise SslscaleError(f"no picture under {root} has a caption beside it (x.png with x.txt): add the captions, "
                            "or pass a .jsonl of {\"image\": path, \"text\": caption} lines")
    classes, labels = folder_labels(root, files)
    return [(p, caption_of(p.with_suffix(".txt").read_bytes()), labels.get(p)) for p in files], classes


def _jsonl_pairs(path: Path, on_error: str, skipped: list[str]) -> list[Pair]:
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image, text = row["image"], row["text"]
            assert isinstance(image, str) and isinstance(text, str)
        except (ValueError, KeyError, TypeError, AssertionError):
            _bad(f'{path}:{number} is not a JSON object with "image" and "text" strings (a text corpus\'s .jsonl '
                 "goes in a folder: pass the folder)", on_error, skipped, f"{path}:{number}")
            continue
        pairs.append(((path.parent / image).absolute(), " ".join(text.split()), None))
    return pairs


def _openclipart(root: Path) -> list[Pair]:
    """Each distinct picture with its title and topic words (see the module docstring)."""
    if not root.is_dir():
        raise SslscaleError(f"{root} does not exist: install the Debian package openclipart-png (make openclipart "
                            "does), or pass --path to a copy")
    pairs, seen = [], set()
    for p in folder_files(root, (".png",), "pictures"):
        digest = hashlib.sha256(p.read_bytes()).digest()
        if digest in seen:
            continue
        seen.add(digest)
        topics = " ".join(title_words(Path(part)) for part in p.relative_to(root).parent.parts)
        pairs.append((p, ", ".join(t for t in (title_words(p), topics) if t), None))
    return pairs


def _tuxpaint(root: Path) -> tuple[list[Pair], list[str]]:
    """(pairs, categories): each stamp picture with its caption, labelled by its category folder."""
    if not root.is_dir():
        raise SslscaleError(f"{root} does not exist: install the Debian package tuxpaint-stamps-default (make "
                            "tuxpaint does), or pass --path to a copy")
    found = []
    for p in folder_files(root, (".png",), "pictures"):
        text = p.with_suffix(".txt")
        if not text.is_file() and p.stem.endswith("_mirror"):
            text = p.with_name(p.stem[: -len("_mirror")] + ".txt")
        if text.is_file() and len(p.relative_to(root).parts) > 1:
            found.append((p, caption_of(text.read_bytes()), p.relative_to(root).parts[0]))
    categories = sorted({c for _, _, c in found})
    index = {c: i for i, c in enumerate(categories)}
    return [(p, caption, index[c]) for p, caption, c in found if caption], categories


def caption_splits(pairs: list[Pair], classes: list[str], test_fraction: float, seed: int) -> dict[str, list]:
    """Train and test pairs with whole captions in one split: a seeded, stratified test_fraction of each class's
    distinct captions (at least 1, leaving 1 to train) goes to test with every picture that carries it."""
    if not test_fraction:
        return {"train": pairs}
    captions = sorted({(label, caption) for _, caption, label in pairs})
    y = np.array([label for label, _ in captions], dtype=np.int64)
    counts = np.bincount(y, minlength=len(classes))
    if counts.min() < 2:
        raise SslscaleError(f"category {classes[int(counts.argmin())]} has {counts.min()} caption(s) but a test split "
                            "needs at least 2: pass --test-fraction 0")
    test_ids = stratified_pick(y, np.clip(np.round(test_fraction * counts), 1, counts - 1).astype(np.int64), seed)
    test = {captions[i] for i in test_ids.tolist()}
    return {"train": [q for q in pairs if (q[2], q[1]) not in test], "test": [q for q in pairs if (q[2], q[1]) in test]}


# ---------------------------------------------------------------- the source corpus.prepare writes

def source(name: str, *, on_error: str, test_fraction: float, seed: int, path=None, image_size: int = 64,
           seq_len: Optional[int] = None, vocab_size: int = 4096, tokenizer: Optional[str] = None) -> Source:
    """The pairs of a captioned folder, a .jsonl file, `openclipart` or `tuxpaint_captions` (module docstring);
    tuxpaint_captions with openclipart's tokenizer unless told otherwise (it is the target of openclipart's runs)."""
    if name == "tuxpaint_captions" and not tokenizer:
        from sslscale.data.corpus import resolve

        tokenizer = resolve("openclipart")
    seq_len = seq_len or _length_of(tokenizer) or 32
    if image_size < 1 or not 4 <= seq_len <= 4096 or not len(SPECIAL) < vocab_size <= 2**31:
        raise SslscaleError(f"--image-size {image_size}, --seq-len {seq_len}, --vocab-size {vocab_size}: use a "
                            f"positive size, 4-4096 tokens and more than {len(SPECIAL)} ids (e.g. 64, 32, 4096)")
    if path is not None and name not in BUILTINS:
        raise path_not_taken(name)
    skipped: list[str] = []
    on_error = "skip" if name in BUILTINS else on_error  # a packaged picture PIL refuses cannot be fixed: left out
    root, parts, classes, words = _pairs_of(name, path, on_error, skipped, test_fraction, seed)
    parts = shuffled(parts, seed)
    tok = load_tokenizer(tokenizer) if tokenizer else train_tokenizer([c for _, c, _ in parts["train"]], vocab_size)
    entry = {"kind": "text", "encoding": "ids", "dtype": ids_dtype(tok.get_vocab_size()).name, "max_length": seq_len,
             "vocab_size": tok.get_vocab_size(), "tokenizer": TOKENIZER, "special": list(SPECIAL), "sample": "caption"}
    data = {"image": {"kind": "image", "encoding": "png", "shape": [image_size, image_size, 3], "dtype": "uint8"},
            "text": entry}
    kind = name if name in BUILTINS else "captioned folder" if root.is_dir() else "captions jsonl"
    splits = {split: (len(part), _samples(part, tok, image_size, seq_len, on_error, skipped))
              for split, part in parts.items()}
    return Source(kind, str(root), data, classes, splits, skipped, {TOKENIZER: tok.to_str().encode()}, words)


def _pairs_of(name: str, path, on_error: str, skipped: list[str], test_fraction: float, seed: int):
    """(root, pairs per split, class names or None, class words or None) of a source (module docstring)."""
    if name == "openclipart":
        root = Path(path or OPENCLIPART_DIR).absolute()
        return root, {"train": _openclipart(root)}, None, None
    if name == "tuxpaint_captions":
        root = Path(path or TUXPAINT_DIR).absolute()
        pairs, classes = _tuxpaint(root)
        words = [CATEGORY_WORDS.get(c, c.replace("_", " ")) for c in classes]
        return root, caption_splits(pairs, classes, test_fraction, seed), classes, words
    root = Path(name).absolute()
    if root.is_file():
        return root, {"train": _jsonl_pairs(root, on_error, skipped)}, None, None
    pairs, classes = _folder_pairs(root)
    by_file = {q[0]: q for q in pairs}
    files = folder_splits(root, list(by_file), classes, {p: q[2] for p, q in by_file.items()}, test_fraction, seed)
    return root, {split: [by_file[p] for p in chosen] for split, chosen in files.items()}, classes, None


def _length_of(corpus_dir: Optional[str]) -> Optional[int]:
    """The caption or passage length of the prepared corpus whose tokenizer a target takes (None: no such corpus),
    so that the target's captions fit the text tower trained on it."""
    from sslscale.data.corpus import MANIFEST, load_manifest  # here: corpus imports the sources

    if not corpus_dir or not (Path(corpus_dir) / MANIFEST).is_file():
        return None
    fields = load_manifest(corpus_dir)["fields"].values()
    return next((e["max_length"] for e in fields if e.get("kind") == "text"), None)


def _samples(pairs: list[Pair], tok, size: int, seq_len: int, on_error: str, skipped: list[str]) -> Iterator[Sample]:
    for path, caption, label in pairs:
        if not caption:
            _bad(f"the caption of {path} is empty", on_error, skipped, path)
            continue
        try:
            image = picture(path, size)
        except SslscaleError as e:
            _bad(str(e), on_error, skipped, path)
            continue
        ids = tok.encode(caption, add_special_tokens=False).ids[: seq_len - 1] + [SEP]
        yield (image, ids), label


def _bad(problem: str, on_error: str, skipped: list[str], what) -> None:
    if on_error == "fail":
        raise SslscaleError(f"{problem}: fix or remove it, or pass --on-error skip")
    skipped.append(str(what))


def claims(source: Path) -> bool:
    """Whether `source` is a captions .jsonl file, or a folder holding a picture with a same-named .txt beside it."""
    if source.is_file():
        return source.suffix.lower() == ".jsonl"
    return source.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS and p.with_suffix(".txt").is_file()
                                   for p in source.rglob("*"))


BUILTINS = ("openclipart", "tuxpaint_captions")
PROVIDER = Provider("image-text", BUILTINS, (), ("path", "image_size", "seq_len", "vocab_size", "tokenizer"), source,
                    claims)
