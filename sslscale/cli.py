"""The `sslscale` command: data prepare | pretrain | evaluate | export | ui.

Every user error is one line (`sslscale: error: ...`) and a non-zero exit; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from sslscale.errors import SslscaleError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslscale", description="Distributed self-supervised pretraining: "
                                "Ray Data -> DeepSpeed under Ray Train -> MLflow -> transfer scores.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare a corpus").add_subparsers(dest="action", required=True)
    prep = data.add_parser("prepare", help="write WebDataset (or Parquet) shards and a manifest")
    prep.add_argument("source", help="fmnist | digits | a folder of images (searched recursively)")
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument("--format", default="webdataset", choices=["webdataset", "parquet"])
    prep.add_argument("--path", help="fmnist only: a folder with your copy of the IDX .gz files")
    prep.add_argument("--shard-size", type=int, default=5000, help="samples per shard")
    prep.add_argument("--image-size", type=int, default=32, help="folder sources: resize to this square size")
    prep.add_argument("--on-error", default="fail", choices=["fail", "skip"], help="undecodable images")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing prepared corpus")

    pre = sub.add_parser("pretrain", help="pretrain an encoder (then score it on the transfer target)")
    pre.add_argument("--recipe", default="simclr_fmnist", help="a recipe from pipelines/ (simclr_fmnist, debug)")
    pre.add_argument("--resume", metavar="RUN_ID_OR_DIR", help="continue a stopped run from its last checkpoint")
    pre.add_argument("--export", metavar="FILE", help="also write the encoder to FILE (*encoder.safetensors)")
    pre.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=100")

    ev = sub.add_parser("evaluate", help="score an encoder on a labelled target (kNN and linear probe)")
    _source_args(ev)
    ev.add_argument("--target", default="fmnist", help="fmnist | digits | a prepared labelled corpus folder")
    ev.add_argument("--no-baseline", action="store_true", help="skip the random-init and pixel baselines")
    ev.add_argument("--knn-k", type=int, default=20)

    ex = sub.add_parser("export", help="write a run's encoder as a standalone safetensors file")
    _source_args(ex)
    ex.add_argument("--out", required=True, help="file name ending in encoder.safetensors")

    ui = sub.add_parser("ui", help="open the MLflow UI on the tracking store")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db")
    return p


def _source_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--run", help="a pretraining run id (or its folder)")
    group.add_argument("--checkpoint", help="a checkpoint folder, run folder or *encoder.safetensors file")
    p.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db")


def _encoder_source(args) -> tuple[str, str]:
    """(path holding an encoder, MLflow run id or '') for --run / --checkpoint."""
    from sslscale import checkpoint, tracking
    from sslscale.pretraining import find_run_dir, run_field

    if args.run:
        run_dir = find_run_dir(args.run, tracking.resolve_uri(args.tracking_uri))
        path = run_dir if os.path.isfile(os.path.join(run_dir, checkpoint.ENCODER)) else checkpoint.latest(run_dir)
        if path is None:
            raise SslscaleError(f"run {args.run} has no checkpoint yet: resume it with `sslscale pretrain --resume`")
        return path, run_field(run_dir, "run_id")
    path = args.checkpoint
    if not os.path.exists(path):
        raise SslscaleError(f"checkpoint {path} does not exist: pass a checkpoint folder or *encoder.safetensors file")
    run_id = ""
    if os.path.isfile(os.path.join(path, checkpoint.STATE)):
        run_id = checkpoint.verify(path).get("run_id", "")
    return path, run_id


def _cmd_prepare(args) -> None:
    from sslscale import corpus

    m = corpus.prepare(args.source, args.out, fmt=args.format, path=args.path, shard_size=args.shard_size,
                       image_size=args.image_size, on_error=args.on_error, overwrite=args.overwrite)
    counts = ", ".join(f"{s}: {v['samples']} samples in {len(v['shards'])} shards" for s, v in m["splits"].items())
    print(f"prepared {args.out} ({m['format']}): {counts}")


def _cmd_pretrain(args) -> None:
    from pipelines import load_recipe
    from sslscale.pretraining import pretrain, resume_config

    if args.export and not args.export.endswith("encoder.safetensors"):
        raise SslscaleError(f"--export {args.export!r} must end in 'encoder.safetensors', e.g. demo.encoder.safetensors")
    if args.export and not os.path.isdir(os.path.dirname(os.path.abspath(args.export))):
        raise SslscaleError(f"--export {args.export!r}: its folder does not exist; create it first")
    if args.resume:
        uri = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("tracking.uri=")), "")
        cfg = resume_config(args.resume, args.overrides, uri)
    else:
        cfg = load_recipe(args.recipe).override(args.overrides)
    result = pretrain(cfg, resume=args.resume)
    encoder = result.encoder_path
    if args.export:
        from sslscale.export import load_encoder, save_encoder

        encoder = os.path.abspath(save_encoder(load_encoder(encoder), args.export))
    print(f"\nrun id:      {result.run_id or '(tracking off)'}")
    print(f"checkpoint:  {result.checkpoint}")
    print(f"encoder:     {encoder}  (load it with sslscale.load_encoder)")
    _print_scores(result.scores)
    print(f"MLflow store: {result.tracking_uri}\nopen the UI:  sslscale ui  (then browse http://127.0.0.1:5000)")


def _print_scores(scores: dict) -> None:
    if scores:
        print("transfer scores (test split accuracy):")
        for key, value in sorted(scores.items()):
            print(f"  {key:<32} {value:.4f}")


def _cmd_evaluate(args) -> None:
    from sslscale import tracking
    from sslscale.config import TransferConfig
    from sslscale.export import load_encoder
    from sslscale.transfer import evaluate

    path, run_id = _encoder_source(args)
    tcfg = TransferConfig(target=args.target, baseline=not args.no_baseline, knn_k=args.knn_k)
    scores = evaluate(load_encoder(path), tcfg)
    _print_scores(scores)
    if run_id:
        uri = tracking.resolve_uri(args.tracking_uri)
        tracking.log_metrics(uri, run_id, {f"transfer/{k}": v for k, v in scores.items()})
        print(f"logged to MLflow run {run_id} at {uri}")


def _cmd_export(args) -> None:
    from sslscale.export import load_encoder, save_encoder

    path, _ = _encoder_source(args)
    print(f"wrote {save_encoder(load_encoder(path), args.out)}")


def _cmd_ui(args) -> None:
    from sslscale.tracking import resolve_uri

    uri = resolve_uri(args.tracking_uri)
    print(f"MLflow UI for {uri} at http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                              "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"])


COMMANDS = {"prepare": _cmd_prepare, "pretrain": _cmd_pretrain, "evaluate": _cmd_evaluate,
            "export": _cmd_export, "ui": _cmd_ui}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.action if args.command == "data" else args.command](args)
    except SslscaleError as e:
        if args.debug:
            raise
        print(f"sslscale: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the user named: unreadable, unwritable, disk full
        if args.debug:
            raise
        print(f"sslscale: error: {e.strerror or e}: {e.filename or ''}; check the path and its permissions",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sslscale: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
