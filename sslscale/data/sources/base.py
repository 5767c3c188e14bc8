"""What a source hands corpus.prepare (`Source`), and how a kind of data offers its sources (`Provider`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from sslscale.errors import SslscaleError

# (a sample's values, one per data field in the Source's `data` order, each as its field's Modality.encode takes it;
#  label or None)
Sample = tuple[tuple, Optional[int]]


@dataclass
class Source:
    """A source's samples, ready to write: `data` maps each data field's name to its manifest entry (with its
    `kind`, which picks the Modality that encodes its values; a picture and its caption are two fields), `splits`
    the samples per split with their expected count, `classes` the label names (None: unlabelled), `skipped` the
    files left out (--on-error skip), `files` the files written beside the manifest (a tokenizer)."""

    kind: str  # what the source is (fmnist, folder, pydocs, text folder), recorded in the manifest
    path: str
    data: dict[str, dict]
    classes: Optional[list[str]]
    splits: dict[str, tuple[int, Iterable[Sample]]]
    skipped: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    class_words: Optional[list[str]] = None


PATH_BUILTINS = ("fmnist", "tuxpaint_speech", "openclipart", "tuxpaint_captions")  # built-ins read from --path


def path_not_taken(name: str) -> SslscaleError:
    """The one line for --path given with a source that does not read it."""
    return SslscaleError(f"--path only applies to the built-in sources {', '.join(PATH_BUILTINS)} (a copy of their "
                         f"files), not to {name!r}: pass a folder as the source itself")


@dataclass(frozen=True)
class Provider:
    """The sources of one kind of data: the built-in names it knows, the file suffixes a folder of its samples
    holds, the prepare options it takes (beyond on_error, test_fraction and seed), and `open(name, on_error=,
    test_fraction=, seed=, **options) -> Source` for a built-in name or a folder; `claims(path)`, where given, says
    whether a folder or file is one of its sources whatever suffixes it holds (a folder of captioned pictures)."""

    kind: str
    builtins: tuple[str, ...]
    extensions: tuple[str, ...]
    options: tuple[str, ...]
    open: Callable[..., Source]
    claims: Optional[Callable[[Path], bool]] = None
