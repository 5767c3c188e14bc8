"""Golden losses: every registered method's losses for its first STEPS optimizer steps, recorded before a refactor
so that the refactor can show it changed none of them (tests/test_losses_unchanged.py checks them).

One plain process, no Ray: `stream.pretrain_dataset` plans the run's stream with a stand-in for `ray.data`
(`_Stream`), whose one task (the function and keyword arguments a Ray Data task would get: today stream.shard_views,
i.e. read_blocks then make_views) then runs here on the prepared corpus's shards, item after item in the plan's
order; `train._batches` groups the rows into global batches as ONE worker's loop does (train.workers=1), through a
stand-in for its dataset shard (`_Shard`: Ray's iter_torch_batches without a local shuffle, so
data.shuffle_buffer=0); the real DeepSpeed `Engine` (fp32, CPU, one torch thread as a worker has) takes the steps,
on the method built after torch.manual_seed(data.seed) as train_loop builds it. Image methods run the debug recipe
on the digits corpus, text methods the debug recipe with the text tests' smallest encoder (test_e2e) on the tiny
text corpus of test_text_corpus (five of Python's documentation sources, 32-token passages, a 500-id BPE), audio
methods the debug recipe with test_audio_e2e's encoder on its subset of real spoken names (tests/speech.py), and
image-text methods the debug recipe with test_clip's towers on 48 real captioned stamps (tests/captions.py).

    .venv/bin/python tests/golden_losses.py             # prints today's losses, writes nothing
    .venv/bin/python tests/golden_losses.py --record    # rewrites tests/golden/losses.json: an intended change only
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np

STEPS = 3
GOLDEN = Path(__file__).parent / "golden" / "losses.json"
RECORD = ".venv/bin/python tests/golden_losses.py --record"
CORPUS = "{corpus}"  # stands for the prepared corpus folder in the recorded overrides
# every method: one worker, the stream's order as planned (no local shuffle), fp32 on the CPU, nothing else started
COMMON = ["train.workers=1", "data.shuffle_buffer=0", "train.use_gpu=false", "engine.precision=fp32",
          "transfer.enabled=false", "tracking.enabled=false"]
# what a method needs beyond the debug recipe (as test_e2e's METHOD_OVERRIDES, less DINO's ZeRO-3, whose start-up
# costs seconds and which no view or loss depends on): DINO's local crops, MAE's ViT, BYOL's asymmetric views
IMAGE = {"byol": ["method.byol.view_blur=1.0,0.1", "method.byol.view_solarize=0,0.2"],
         "dino": ["data.n_local=2", "data.local_size=4", "method.dino.freeze_last_layer=1",
                  "optim.weight_decay_end=0.4"],
         "mae": ["model.encoder=vit", "model.patch_size=2", "model.dim=16", "model.vit_depth=1", "model.heads=2",
                 "method.mae.decoder_dim=16", "method.mae.decoder_depth=1"]}
TEXT = ["model.encoder=text", "model.dim=16", "model.vit_depth=1", "model.heads=2"]  # test_e2e's TEXT
AUDIO = ["model.encoder=wav2vec", "model.dim=16", "model.vit_depth=1", "model.heads=2", "method.wav2vec2.crop=8000",
         "method.wav2vec2.num_negatives=4"]  # test_audio_e2e's, on its real subset (tests/speech.py)
CAPTIONS = ["model.widths=8,16", "method.clip.text_dim=16", "method.clip.text_depth=1", "method.clip.text_heads=2",
            "method.clip.embed_dim=16"]  # test_clip's towers, on 48 real captioned stamps (tests/captions.py)
KIND_OVERRIDES = {"text": TEXT, "audio": AUDIO, "image+text": CAPTIONS}
PYDOCS = ["tutorial/introduction.rst.txt", "tutorial/controlflow.rst.txt", "faq/general.rst.txt",
          "howto/sorting.rst.txt", "glossary.rst.txt"]  # test_text_corpus's tiny corpus


def methods() -> dict[str, str]:
    """Every registered method -> the kind of corpus it trains on ("image", "text", "audio", or "image+text": the
    kinds of its fields)."""
    from sslscale.config import Config
    from sslscale.methods import NAMES, kinds_read

    return {name: "+".join(kinds_read(Config().override([f"method.name={name}"]))) for name in NAMES}


def overrides(method: str, kind: str) -> list[str]:
    """The debug recipe's overrides for `method` (CORPUS in place of the corpus folder)."""
    return [f"method.name={method}", f"data.corpus={CORPUS}", *COMMON, *KIND_OVERRIDES.get(kind, []),
            *IMAGE.get(method, [])]


def prepare_corpora(root: Path, digits: str | None = None) -> dict[str, str]:
    """{"image": the digits corpus (`digits`, else prepared under root), "text": the tiny text corpus, "audio": the
    spoken-names subset, "image+text": 48 captioned stamps at 8 px}."""
    from captions import captioned_folder
    from speech import speech_subset
    from sslscale.data import corpus
    from sslscale.data.sources import text

    if digits is None:
        digits = str(root / "digits")
        corpus.prepare("digits", digits, progress=False)
    docs = root / "docs"
    for i, name in enumerate(PYDOCS):  # as test_text_corpus._pydocs lays them out
        target = docs / ("part" if i % 2 else "") / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(text.PYDOCS_DIR) / name, target)
    paragraphs = (Path(text.PYDOCS_DIR) / PYDOCS[0]).read_text().split("\n\n")[:20]
    (docs / "part" / "lines.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    corpus.prepare(str(docs), root / "text", seq_len=32, vocab_size=500, progress=False)
    corpus.prepare("tuxpaint_speech", root / "audio", path=str(speech_subset(root / "stamps")), progress=False)
    corpus.prepare(str(captioned_folder(root / "pics", 48)), root / "captions", image_size=8, seq_len=16,
                   vocab_size=300, progress=False)
    return {"image": digits, "text": str(root / "text"), "audio": str(root / "audio"),
            "image+text": str(root / "captions")}


class _Stream:
    """Stands in for ray.data.from_items(items) in stream.pretrain_dataset: keeps the plan's items and the task
    map_batches would run on each (one item per call); `blocks` runs it here, item after item."""

    def __init__(self, items: list[dict], **options):
        self.items, self.task, self.context = items, None, SimpleNamespace()

    def map_batches(self, fn, *, fn_kwargs: dict, batch_size: int, **options):
        if self.task is not None or batch_size != 1:
            raise NotImplementedError("the stream's plan changed shape (not one task per plan item): adapt _Stream")
        self.task = lambda batch: fn(batch, **fn_kwargs)
        return self

    def blocks(self):
        for item in self.items:
            yield from self.task({k: np.asarray([v]) for k, v in item.items()})


class _Shard:
    """Stands in for ONE worker's dataset shard (train._batches reads it): the stream's rows in order, cut into torch
    batches as Ray's iter_torch_batches cuts them without a local shuffle."""

    def __init__(self, blocks):
        self.blocks = blocks

    def iter_torch_batches(self, *, batch_size: int, drop_last: bool, local_shuffle_buffer_size, **options):
        import torch

        assert drop_last and not local_shuffle_buffer_size, "golden runs read the stream in order: no shuffle"
        held: dict[str, np.ndarray] = {}
        for block in self.blocks:
            held = {k: np.concatenate([held[k], v]) if held else v for k, v in block.items()}
            while len(held["id"]) >= batch_size:
                yield {k: torch.as_tensor(v[:batch_size]) for k, v in held.items()}
                held = {k: v[batch_size:] for k, v in held.items()}


def losses(method: str, corpora: dict[str, str]) -> list[float]:
    """`method`'s losses for its first STEPS optimizer steps (corpora: prepare_corpora's)."""
    import ray.data
    import torch

    from pipelines import load_recipe
    from sslscale.data import stream
    from sslscale.methods import build_method, view_parts
    from sslscale.pretraining import preflight
    from sslscale.training import train
    from sslscale.training.engine import Engine

    kind = methods()[method]
    cfg = load_recipe("debug").override([o.replace(CORPUS, corpora[kind]) for o in overrides(method, kind)])
    corpus_dir, inputs = preflight(cfg)
    with mock.patch.object(ray.data, "from_items", _Stream):
        views = stream.pretrain_dataset(cfg, corpus_dir, view_parts(cfg, corpus_dir))
    groups = train._batches(_Shard(views.blocks()), cfg, rank=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.train.threads_per_worker)  # 1, as a worker runs: sums in one order on any machine
    try:
        torch.manual_seed(cfg.data.seed)
        engine = Engine(build_method(cfg, inputs), cfg)
        return [engine.train_step(next(groups))["loss"] for _ in range(STEPS)]
    finally:
        torch.set_num_threads(threads)


def all_losses(corpora: dict[str, str]) -> dict[str, list[float]]:
    return {name: losses(name, corpora) for name in methods()}


def record(path: Path = GOLDEN) -> dict:
    """Run every method on freshly prepared corpora and write what the test compares against."""
    with tempfile.TemporaryDirectory(prefix="sslscale-golden-") as tmp:
        got = all_losses(prepare_corpora(Path(tmp)))
    kinds = methods()
    out = {"steps": STEPS, "torch": version("torch"), "deepspeed": version("deepspeed"), "losses": got,
           "overrides": {name: overrides(name, kinds[name]) for name in got}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dump(out))
    return out


def _dump(out: dict) -> str:
    """`out` as JSON, each table (losses, overrides) a line per method."""
    def value(v) -> str:
        if not isinstance(v, dict):
            return json.dumps(v)
        return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(x)}" for k, x in v.items()) + "\n }"

    return "{\n" + ",\n".join(f" {json.dumps(k)}: {value(v)}" for k, v in out.items()) + "\n}\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help=f"write {GOLDEN.name} (an intended change only)")
    if parser.parse_args(argv).record:
        got = record()["losses"]
    else:  # print today's losses, write nothing
        with tempfile.TemporaryDirectory(prefix="sslscale-golden-") as tmp:
            got = all_losses(prepare_corpora(Path(tmp)))
    print(json.dumps(got, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
