"""Test helper: a small subset of the real `tuxpaint_speech` corpus (Debian tuxpaint-stamps-default), laid out as its
stamps folder is, for `sslscale data prepare tuxpaint_speech --path`.

    root = speech_subset(tmp_path / "stamps")   # 3 languages x 24 pictures of real spoken names

Besides the spoken names it holds what the source must leave out: a real sound effect (`<stamp>.ogg`), a
byte-identical copy of one clip under a variant's name (`<stamp>-9_desc_fr.ogg`), and a language with too few clips.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from sslscale.data.sources.audio import TUXPAINT_DIR, spoken_names

LANGS = ("fr", "ru", "es")


def speech_subset(root: Path, stamps: int = 24, langs: tuple[str, ...] = LANGS) -> Path:
    """The first `stamps` pictures (in path order) spoken in every one of `langs`, copied under `root` with their
    category folders, plus the extras the module docstring names."""
    by_stamp: dict[Path, dict[str, Path]] = {}
    for path, _, lang in spoken_names(Path(TUXPAINT_DIR)):
        by_stamp.setdefault(path.with_name(path.name.split("_desc")[0]), {})[lang] = path
    chosen = [s for s, got in by_stamp.items() if set(langs) <= set(got)][:stamps]
    for stamp in chosen:
        for lang in langs:
            source = by_stamp[stamp][lang]
            target = root / source.relative_to(TUXPAINT_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    first = root / chosen[0].relative_to(TUXPAINT_DIR)
    spoken = by_stamp[chosen[0]][langs[0]]
    shutil.copy(spoken, first.with_name(first.name + "-9" + spoken.name[len(first.name):]))  # a duplicate variant
    effect = next(p for p in sorted(Path(TUXPAINT_DIR).rglob("*.ogg")) if "_desc" not in p.name)
    shutil.copy(effect, first.with_name(first.name + ".ogg"))  # a real sound effect, not speech
    shutil.copy(by_stamp[chosen[-1]][langs[-1]], first.with_name(first.name + "_desc_nl.ogg"))  # one Dutch clip
    return root
