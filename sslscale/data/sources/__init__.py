"""Where a corpus's samples come from, by kind of data: built-in corpora and folders, for corpus.prepare.

Each kind offers its sources as a `Provider` (sources/base.py): images (sources/images.py: fmnist, digits, a folder
of images), text (text.py: pydocs, bbcnews, a folder of .txt/.md/.jsonl files), audio (audio.py: tuxpaint_speech,
a folder of .ogg/.wav/.flac files) and picture-caption pairs (pairs.py: openclipart, tuxpaint_captions, a folder of
x.png beside x.txt, a .jsonl file). A built-in name goes to the provider that knows it; a folder or file to the first
provider that claims it (pairs: captioned pictures, a .jsonl file), else a folder to the first provider, in
`providers()` order, whose files it holds (images before text: a folder of images and unrelated text files is an
image folder); a folder of neither is read as images, whose error then names what was looked for. Adding a kind of
data adds its provider to `providers()`.
"""
from __future__ import annotations

from pathlib import Path

from sslscale.data.sources.base import Provider, Sample, Source
from sslscale.errors import SslscaleError


def providers() -> tuple[Provider, ...]:
    """Every kind's provider, in the order a folder is matched (imported here: text.py imports sources.base)."""
    from sslscale.data.sources import audio, images, pairs, text

    return images.PROVIDER, audio.PROVIDER, text.PROVIDER, pairs.PROVIDER


def builtin_sources() -> tuple[str, ...]:
    """Source names that are not folders."""
    return tuple(name for p in providers() for name in p.builtins)


def provider(source: str) -> Provider:
    """The provider of a built-in name or a folder; one line when `source` is neither."""
    for p in providers():
        if source in p.builtins:
            return p
    root = Path(source)
    claimed = [p for p in providers() if p.claims and p.claims(root)]
    if claimed:
        return claimed[0]
    if not root.is_dir():
        raise SslscaleError(f"source {source!r} is neither a built-in ({', '.join(builtin_sources())}) "
                            "nor an existing folder: pass a built-in name or the path to a folder of samples")
    suffixes = {p.suffix.lower() for p in root.rglob("*") if p.is_file()}
    images = next(p for p in providers() if p.kind == "image")
    return next((p for p in providers() if suffixes & set(p.extensions)), images)


def open_source(source: str, *, on_error: str, test_fraction: float, seed: int, **options) -> Source:
    """The samples of `source` from its provider, which takes the `options` it knows (an option left at None
    takes the provider's default); one line for an option given that it does not take."""
    p = provider(source)
    given = {k: v for k, v in options.items() if v is not None}
    foreign = sorted(set(given) - set(p.options))
    if foreign:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in p.options) or "no options"
        raise SslscaleError(f"--{foreign[0].replace('_', '-')} does not apply to {p.kind} source {source!r} (it "
                            f"takes {flags}): leave it out")
    return p.open(source, on_error=on_error, test_fraction=test_fraction, seed=seed, **given)


__all__ = ["Provider", "Sample", "Source", "builtin_sources", "open_source", "provider"]
