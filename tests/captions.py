"""Test helper: small subsets of Tux Paint's captioned stamps (Debian tuxpaint-stamps-default), real pictures with
their real captions, for the picture-caption sources.

    folder = captioned_folder(tmp_path / "pics", 48)      # 48 stamps with distinct captions, x.png beside x.txt
    stamps = stamps_subset(tmp_path / "stamps", 6)        # 6 a category, laid out as the stamps folder is
"""
from __future__ import annotations

import shutil
from pathlib import Path

from sslscale.data.sources.pairs import TUXPAINT_DIR, caption_of

STAMPS = Path(TUXPAINT_DIR)


def captioned(limit: int | None = None) -> list[Path]:
    """Stamp pictures with a caption of their own, one per distinct caption, in path order."""
    found, seen = [], set()
    for p in sorted(STAMPS.rglob("*.png")):
        text = p.with_suffix(".txt")
        caption = caption_of(text.read_bytes()) if text.is_file() else ""
        if caption and caption not in seen:
            seen.add(caption)
            found.append(p)
    return found[:limit]


def captioned_folder(root: Path, n: int) -> Path:
    """n stamps spread over the categories, each picture and its caption file flat in `root` (unlabelled)."""
    found = captioned()
    for p in found[::len(found) // n][:n]:
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / f"{p.parent.name}-{p.name}")
        shutil.copy(p.with_suffix(".txt"), root / f"{p.parent.name}-{p.stem}.txt")
    return root


def stamps_subset(root: Path, per_category: int, categories=("animals", "food", "vehicles")) -> Path:
    """The first `per_category` captioned stamps of each category, with their category folders, under `root` (for
    `sslscale data prepare tuxpaint_captions --path`)."""
    for category in categories:
        for p in [q for q in captioned() if q.relative_to(STAMPS).parts[0] == category][:per_category]:
            target = root / p.relative_to(STAMPS)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, target)
            shutil.copy(p.with_suffix(".txt"), target.with_suffix(".txt"))
    return root
