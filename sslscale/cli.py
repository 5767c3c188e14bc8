"""The `sslscale` command: data prepare | pretrain | sweep | evaluate | export | embed | ui | submit.

Every user error is one line (`sslscale: error: ...`) and a non-zero exit; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from sslscale.errors import SslscaleError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslscale", description="Distributed self-supervised pretraining: "
                                "Ray Data -> DeepSpeed under Ray Train -> MLflow -> transfer scores.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare a corpus").add_subparsers(dest="action", required=True)
    prep = data.add_parser("prepare", help="write WebDataset (or Parquet) shards and a manifest")
    prep.add_argument("source", help="fmnist | digits | pydocs (text) | tuxpaint_speech (audio) | openclipart, "
                      "tuxpaint_captions (pictures with captions) | a folder of images, of .txt/.md/.jsonl text, of "
                      ".ogg/.wav/.flac audio, or of pictures with captions (x.png beside x.txt), searched recursively, "
                      "first-level class subfolders giving labels | a .jsonl file of {\"image\": path, \"text\": "
                      "caption} lines")
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument("--format", default="webdataset", choices=["webdataset", "parquet"])
    prep.add_argument("--path", help="fmnist: a folder with your copy of the IDX .gz files; tuxpaint_speech, "
                      "tuxpaint_captions: a copy of Tux Paint's stamps folder; openclipart: a copy of its png folder")
    prep.add_argument("--shard-size", type=int, default=5000, help="samples per shard")
    prep.add_argument("--image-size", type=int,
                      help="image folders: resize to this square size (default 32; pictures with captions: 64)")
    prep.add_argument("--on-error", default="fail", choices=["fail", "skip"],
                      help="undecodable images or text files")
    prep.add_argument("--test-fraction", type=float, default=0.2,
                      help="folders with class subfolders: share of each class held out as the test split that "
                      "transfer scores on (at least 1 image per class; 0: no test split)")
    prep.add_argument("--seed", type=int, default=0, help="folder sources: seed of the test split")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing prepared corpus")
    prep.add_argument("--seq-len", type=int,
                      help="text: tokens per sample, a passage of sentences (default 128; captions: 32)")
    prep.add_argument("--vocab-size", type=int,
                      help="text: the BPE tokenizer's vocabulary (default 8192; captions: 4096)")
    prep.add_argument("--tokenizer", metavar="CORPUS",
                      help="text and captions: use this prepared corpus's tokenizer (a transfer target: the "
                      "pretraining corpus's) instead of training one")

    pre = sub.add_parser("pretrain", help="pretrain an encoder (then score it on the transfer target)")
    pre.add_argument("--recipe", default="simclr_fmnist", help="a recipe from pipelines/ (simclr_fmnist, debug)")
    pre.add_argument("--resume", metavar="RUN_ID_OR_DIR", help="continue a stopped run from its last checkpoint")
    pre.add_argument("--export", metavar="FILE", help="also write the encoder to FILE (*encoder.safetensors)")
    pre.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=100")

    sw = sub.add_parser("sweep", help="a Ray Tune sweep of pretraining runs, ranked by transfer score",
                        description="Each trial is a pretraining run (a child of one MLflow parent run per sweep), "
                        "stopped early by ASHA on a label-free signal, ranked by its transfer score.")
    sw.add_argument("--recipe", default="simclr_fmnist_sweep",
                    help="a sweep recipe (base recipe + space: simclr_fmnist_sweep, debug_sweep) or a plain recipe")
    sw.add_argument("--space", action="append", default=[], metavar="KEY=DIST",
                    help="searched key, repeatable: choice:a,b | grid:a,b | uniform:lo:hi | loguniform:lo:hi | "
                    "randint:lo:hi (replaces the sweep recipe's space)")
    sw.add_argument("--samples", type=int, help="trials to sample (each grid value multiplies them)")
    sw.add_argument("--scheduler", choices=["asha", "fifo"])
    sw.add_argument("--search", choices=["random", "optuna"])
    sw.add_argument("--metric", default="", help="what ranks trials (default transfer/<target>/knn_top1)")
    sw.add_argument("--mode", default="max", choices=["max", "min"])
    sw.add_argument("--max-concurrent", type=int, default=0, help="trials at once (default: from cluster CPUs)")
    sw.add_argument("--name", default="", help="the sweep's name (folder under train.storage/sweeps)")
    sw.add_argument("--resume", metavar="NAME", help="continue a stopped sweep of this name")
    sw.add_argument("--register", default="", metavar="MODEL",
                    help="register the best trial's encoder in MLflow's model registry under this name (with "
                    "--resume: a finished sweep's winner too)")
    sw.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every trial")

    ev = sub.add_parser("evaluate", help="score an encoder on a labelled target (kNN, linear probe, fine-tuning)")
    _source_args(ev)
    ev.add_argument("--target", default="fmnist", help="fmnist | digits | a prepared labelled corpus folder")
    ev.add_argument("--no-baseline", action="store_true", help="skip the random-init and pixel baselines")
    ev.add_argument("--knn-k", type=int, default=20)
    ev.add_argument("--protocol", "--protocols", dest="protocols", default="knn,linear",
                    help="comma-separated: knn, linear, finetune (encoder + linear head, end to end), scratch (the "
                         "same architecture trained from random init: the supervised baseline)")
    ev.add_argument("--label-fractions", default="1.0",
                    help="comma-separated fractions of the train labels each protocol is fit on (stratified, "
                         "seeded; the test split stays whole), e.g. 0.01,0.1,1.0")
    ev.add_argument("--out", default="evaluation", help="folder for the pictures: confusion_matrix.png, "
                    "embedding_map.png, label_efficiency.png (default: ./evaluation)")
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="transfer.* keys, e.g. transfer.finetune_steps=300 transfer.scratch_lrs=1e-3,3e-3 "
                         "transfer.finetune_workers=2 (on Ray Train) transfer.seed=1 transfer.embedding_map=pca")

    ex = sub.add_parser("export", help="write a run's encoder as a standalone safetensors file")
    _source_args(ex)
    ex.add_argument("--out", required=True, help="file name ending in encoder.safetensors")

    em = sub.add_parser("embed", help="turn pictures, lines of text or a prepared corpus into vectors (Parquet)",
                        description="One row per input: its path, line number, or split and id, and its vector. An "
                        "encoder gives its features; a CLIP export the joint embedding of its image or text tower.")
    em.add_argument("--encoder", required=True, help="an exported *encoder.safetensors file (or a run folder)")
    em.add_argument("--input", required=True, help="a folder of pictures (or audio), a text file (one document a "
                    "line), or a prepared corpus folder")
    em.add_argument("--out", required=True, help="the .parquet file to write")
    em.add_argument("--workers", type=int, default=0, help="embed on Ray Data with this many actors (0: here)")
    em.add_argument("--batch-size", type=int, default=256)
    em.add_argument("--on-error", default="fail", choices=["fail", "skip"], help="a file that cannot be decoded")
    em.add_argument("--tokenizer", metavar="CORPUS", help="text: this prepared corpus's tokenizer (for files "
                    "exported before they carried theirs)")
    em.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    sb = sub.add_parser("submit", help="run pretrain | sweep | evaluate | embed as a Ray job on a cluster",
                        usage="sslscale submit [--address URL] [--no-wait] -- pretrain|sweep|evaluate|embed ARGS...\n"
                              "       sslscale submit [--address URL] --list | --logs ID | --stop ID",
                        description="Sends this folder (without .git and what .gitignore lists) to the cluster and "
                        "runs the command there as a Ray job, printing its output. The cluster's auth token comes "
                        "from RAY_AUTH_MODE=token plus RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH.")
    sb.add_argument("--address", default="", metavar="URL", help="the cluster's dashboard URL (default "
                    f"$RAY_API_SERVER_ADDRESS, an http $RAY_ADDRESS, else {JOB_SERVER})")
    sb.add_argument("--no-wait", action="store_true", help="print the job id and return")
    what = sb.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="the cluster's jobs")
    what.add_argument("--logs", metavar="ID", help="a job's output so far")
    what.add_argument("--stop", metavar="ID", help="stop a job")
    sb.add_argument("job", nargs=argparse.REMAINDER, help="-- then the sslscale command to run, e.g. -- pretrain "
                    "--recipe simclr_fmnist train.steps=200")

    ui = sub.add_parser("ui", help="open the MLflow UI on the tracking store")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db")
    return p


JOB_SERVER = "http://127.0.0.1:8265"
SUBMITTABLE = ("pretrain", "sweep", "evaluate", "embed")


def _source_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--run", help="a pretraining run id (or its folder)")
    group.add_argument("--checkpoint", help="a checkpoint folder, run folder or *encoder.safetensors file")
    p.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db")


def _encoder_source(args) -> tuple[str, str, dict, str]:
    """(path holding an encoder, MLflow run id or '', the run's config as a dict or {}, the run folder or '') for
    --run / --checkpoint (a run folder given as --checkpoint counts as --run)."""
    from sslscale import storage
    from sslscale.training.run_folder import RUN_FILE, find_run_dir, run_field
    from sslscale.runtime import tracking
    from sslscale.training import checkpoint

    if args.run or storage.isfile(storage.join(args.checkpoint, RUN_FILE)):
        run_dir = find_run_dir(args.run or args.checkpoint, tracking.resolve_uri(args.tracking_uri))
        path = run_dir if storage.isfile(storage.join(run_dir, checkpoint.ENCODER)) else checkpoint.latest(run_dir)
        if path is None:
            raise SslscaleError(f"run {run_dir} has no checkpoint yet: resume it with `sslscale pretrain --resume`")
        return path, run_field(run_dir, "run_id"), run_field(run_dir, "config", {}), run_dir
    path = args.checkpoint
    if not storage.exists(path):
        raise SslscaleError(f"checkpoint {path} does not exist: pass a checkpoint folder or *encoder.safetensors file")
    state = checkpoint.verify(path) if storage.isfile(storage.join(path, checkpoint.STATE)) else {}
    return path, state.get("run_id", ""), state.get("config", {}), ""


# what `evaluate` may override besides transfer.*: where fine-tuning's workers run (the run's own may not fit here)
EVALUATE_KEYS = ("train.use_gpu", "train.cpus_per_worker", "train.threads_per_worker", "train.worker_resources",
                 "train.storage")


def evaluate_config(trained_with: dict, flags: list[str], overrides: list[str]):
    """The config `evaluate` scores with: the run's engine (ZeRO stage, precision: fine-tuning trains as the run
    did), this machine's defaults for where workers run, and the command's flags and overrides (transfer.* and
    EVALUATE_KEYS; the run's transfer section is not used: a sweep trial's may score on a subset)."""
    from sslscale.config import Config

    for item in overrides:
        key = item.partition("=")[0].strip()
        if not (key.startswith("transfer.") or key in EVALUATE_KEYS):
            raise SslscaleError(f"sslscale evaluate takes transfer.* overrides and {', '.join(EVALUATE_KEYS)}, not "
                                f"{key}: e.g. transfer.finetune_steps=300")
    base = Config.from_dict({"engine": trained_with["engine"]}) if "engine" in trained_with else Config()
    return base.override(flags + overrides)


def _cmd_prepare(args) -> None:
    from sslscale.data import corpus

    m = corpus.prepare(args.source, args.out, fmt=args.format, path=args.path, shard_size=args.shard_size,
                       image_size=args.image_size, on_error=args.on_error, overwrite=args.overwrite,
                       test_fraction=args.test_fraction, seed=args.seed, seq_len=args.seq_len,
                       vocab_size=args.vocab_size, tokenizer=args.tokenizer)  # each kind's source takes its own
    counts = ", ".join(f"{s}: {v['samples']} samples in {len(v['shards'])} shards" for s, v in m["splits"].items())
    print(f"prepared {args.out} ({m['format']}): {counts}")


def _cmd_pretrain(args) -> None:
    from pipelines import load_recipe
    from sslscale.pretraining import pretrain
    from sslscale.training.run_folder import resume_config
    from sslscale.runtime import tracking

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
        from sslscale.training.export import copy_export

        encoder = os.path.abspath(copy_export(encoder, args.export))
    print(f"\nrun id:      {result.run_id or '(tracking off)'}")
    print(f"checkpoint:  {result.checkpoint}")
    print(f"encoder:     {encoder}  (load it with sslscale.load_encoder)")
    _print_scores(result.scores)
    print(f"MLflow store: {tracking.shown(result.tracking_uri)}\n"
          f"open the UI:  sslscale ui  (then browse http://127.0.0.1:5000)")


def _print_scores(scores: dict) -> None:
    if scores:
        print("transfer scores (test split accuracy):")
        for key, value in sorted(scores.items()):
            if not key.endswith("/seconds"):
                print(f"  {key:<32} {value:.4f}")
        took = sum(v for k, v in scores.items() if k.endswith("/seconds"))
        if took:
            print(f"  (scored in {took:.0f} s)")
        if any("/frac" in k or "finetune_" in k or "scratch_" in k for k in scores):
            from sslscale.evaluation.transfer import efficiency_table

            print(efficiency_table(scores))


def _sweep_config(args) -> tuple:
    """(the sweep recipe, its base config with the recipe's sizing and the command's overrides)."""
    from pipelines import load_recipe, load_sweep

    recipe = load_sweep(args.recipe)
    return recipe, load_recipe(recipe["recipe"]).override(recipe["sizing"] + args.overrides)


def _cmd_sweep(args) -> None:
    from sslscale.sweeps import tune

    if args.resume:
        out = [o.partition("=")[2] for o in args.overrides
               if o.partition("=")[0] in ("train.storage", "train.output_dir")]
        if args.space or args.samples is not None or len(out) != len(args.overrides):
            raise SslscaleError("--resume continues a sweep as it was started: pass only its name (and "
                                "train.storage=... if it was not the default)")
        tune.resume(args.resume, out[0] if out else None, register=args.register)
        return
    recipe, cfg = _sweep_config(args)
    tune.sweep(cfg, args.space or recipe["space"], samples=recipe["samples"] if args.samples is None else args.samples,
               scheduler=args.scheduler or recipe["scheduler"], search=args.search or recipe["search"],
               metric=args.metric, mode=args.mode, max_concurrent=args.max_concurrent, name=args.name,
               recipe=recipe["recipe"], retrain_overrides=args.overrides, register=args.register)


def _cmd_evaluate(args) -> None:
    from sslscale import storage
    from sslscale.evaluation import zeroshot
    from sslscale.evaluation.transfer import chosen, timed_evaluate
    from sslscale.runtime import tracking
    from sslscale.training.export import load_encoder

    flags = [f"transfer.target={args.target}", f"transfer.baseline={not args.no_baseline}",
             f"transfer.knn_k={args.knn_k}", f"transfer.protocols={args.protocols}",
             f"transfer.label_fractions={args.label_fractions}"]
    chosen(evaluate_config({}, flags, args.overrides).transfer)  # a bad key or value fails before any file is read
    path, run_id, trained_with, run_dir = _encoder_source(args)
    cfg = evaluate_config(trained_with, flags, args.overrides)
    os.makedirs(args.out, exist_ok=True)  # an unwritable folder fails before the scoring, not after
    scores, plots = timed_evaluate(load_encoder(path), cfg.transfer, cfg, args.out)
    scores.update(zeroshot.evaluate_export(path, cfg.transfer))  # a CLIP export on a captioned target
    _print_scores(scores)
    if plots:
        print("plots:\n" + "\n".join(f"  {p}" for p in plots))
    if run_id:
        uri = tracking.resolve_uri(args.tracking_uri)
        tracking.log_metrics(uri, run_id, {f"transfer/{k}": v for k, v in scores.items()})
        for plot in plots:
            tracking.log_artifact(uri, run_id, plot)
        print(f"logged to MLflow run {run_id} at {tracking.shown(uri)}")
    for plot in plots if run_dir else ():  # beside the run's other plots, as pretraining leaves them
        storage.copy_file(plot, storage.join(run_dir, os.path.basename(plot)))


def _cmd_export(args) -> None:
    from sslscale.training.export import copy_export

    path = _encoder_source(args)[0]
    print(f"wrote {copy_export(path, args.out)}")


def _cmd_ui(args) -> None:
    """Print each experiment's page in the classic ML workspace (MLflow opens in GenAI otherwise), then become the
    UI server, without the job runner (8 background processes, ~1.3 GB, that sslscale never uses)."""
    from sslscale.runtime.tracking import experiment_urls, resolve_uri, shown, ui_url

    uri, base = resolve_uri(args.tracking_uri), f"http://127.0.0.1:{args.port}"
    urls = experiment_urls(uri, base)
    print(f"MLflow UI for {shown(uri)} at {ui_url(base)} (Ctrl-C stops it)", flush=True)
    for name, url in urls:
        print(f"  {name}: {url}", flush=True)
    print("A page in MLflow's GenAI workspace (Traces, Judges, Evaluation runs; a run's own page opens there)? "
          "Click 'Model training' at its top left once: this browser then remembers it.", flush=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    os.execve(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"], env)


def _job_command(job: list[str]) -> tuple[list[str], dict | None]:
    """The sslscale command a job runs, checked here first (arguments, recipe, config keys) so a typo costs no upload;
    and the resources its driver reserves: train.driver_resource when the command sets it, else none, and Ray then
    runs the driver on the head node."""
    from pipelines import load_recipe
    from sslscale.checks import driver_resource, validate

    job = job[1:] if job[:1] == ["--"] else job
    if not job or job[0] not in SUBMITTABLE:
        raise SslscaleError(f"say what to run after --: one of {', '.join(SUBMITTABLE)}, e.g. "
                            f"sslscale submit -- pretrain --recipe debug")
    args = _parser().parse_args(job)
    if args.command in ("pretrain", "sweep") and not args.resume:
        validate(_sweep_config(args)[1] if args.command == "sweep" else
                 load_recipe(args.recipe).override(args.overrides))
    spec = [o.partition("=")[2] for o in getattr(args, "overrides", []) if o.startswith("train.driver_resource=")]
    return job, driver_resource(spec[-1]) if spec else None


def _cmd_submit(args) -> None:
    from sslscale.runtime.cluster import Jobs

    if not (args.list or args.logs or args.stop):
        job, resources = _job_command(args.job)
    elif args.job:
        raise SslscaleError("--list, --logs and --stop take no command after them")
    jobs = Jobs(args.address or None)
    if args.list:
        for j in sorted(jobs.list(), key=lambda j: j.start_time or 0):
            print(f"{j.submission_id}  {j.status.value:<9}  {j.entrypoint}")
        return
    if args.logs:
        print(jobs.logs(args.logs), end="")
        return
    if args.stop:
        jobs.stop(args.stop)
        print(f"job {args.stop}: {jobs.wait(args.stop, timeout=60).value}")
        return
    job_id = jobs.submit(shlex.join(["python", "-m", "sslscale.cli", *job]), os.getcwd(), resources)
    print(f"submitted job {job_id} to {jobs.url}\n  output: sslscale submit --logs {job_id}\n"
          f"  stop:   sslscale submit --stop {job_id}", flush=True)
    if args.no_wait:
        return
    try:
        status = jobs.follow(job_id)
    except KeyboardInterrupt:
        raise SslscaleError(f"stopped following; job {job_id} goes on: sslscale submit --stop {job_id} "
                            f"ends it") from None
    if status.value != "SUCCEEDED":
        message = (jobs.info(job_id).message or "").strip().splitlines()
        raise SslscaleError(f"job {job_id} {status.value}" + (f": {message[-1]}" if message else ""))


def _cmd_embed(args) -> None:
    from sslscale.evaluation.embed import embed

    got = embed(args.encoder, args.input, args.out, workers=args.workers, batch_size=args.batch_size,
                on_error=args.on_error, tokenizer=args.tokenizer, overwrite=args.overwrite)
    skipped = f"; {len(got['skipped'])} left out: {', '.join(got['skipped'][:5])}" if got["skipped"] else ""
    print(f"wrote {got['out']}: {got['rows']} vectors of {got['dim']}{skipped}")


COMMANDS = {"prepare": _cmd_prepare, "pretrain": _cmd_pretrain, "sweep": _cmd_sweep, "evaluate": _cmd_evaluate,
            "export": _cmd_export, "embed": _cmd_embed, "ui": _cmd_ui, "submit": _cmd_submit}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.action if args.command == "data" else args.command](args)
    except SslscaleError as e:
        if getattr(e, "signum", None):  # pretraining.RunStopped: one line with the step, checkpoint and --resume
            print(f"sslscale: {e}", file=sys.stderr)
            return 128 + e.signum
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
