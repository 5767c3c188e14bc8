"""The command line as a user meets it: --help, and bad input that ends in one clear line and a non-zero exit."""
import os
import subprocess
import sys

import pytest

from sslscale.data import corpus

SSLSCALE = os.path.join(os.path.dirname(sys.executable), "sslscale")


def run(*args, cwd=None, env=None):
    return subprocess.run([SSLSCALE, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, **(env or {})})


def one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("sslscale: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_help_lists_the_commands():
    out = run("--help").stdout
    assert all(cmd in out for cmd in ("data", "pretrain", "evaluate", "export", "ui"))


def test_missing_path(tmp_path):
    one_line_error(run("data", "prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), "nope")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(run("data", "prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "o")), "no images found")


def test_corrupt_image_keeps_the_existing_corpus(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    (src / "bad.png").write_bytes(b"\x89PNG this is not an image")
    out = tmp_path / "out"
    corpus.prepare("digits", out, progress=False)
    before = sorted(os.listdir(out))
    one_line_error(run("data", "prepare", str(src), "--out", str(out), "--overwrite"), "bad.png", "--on-error skip")
    assert sorted(os.listdir(out)) == before
    corpus.verify_shards(out, "train")  # still whole
    assert not (tmp_path / "out.partial").exists()


def test_unknown_config_key_before_any_worker_starts(tmp_path):
    proc = run("pretrain", "--recipe", "debug", "train.stepz=3", cwd=tmp_path)
    one_line_error(proc, "unknown config key 'train.stepz'")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()


def test_evaluate_missing_checkpoint(tmp_path):
    one_line_error(run("evaluate", "--checkpoint", str(tmp_path / "none"), "--target", "digits"), "does not exist")


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = run("--debug", "data", "prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.parametrize("resume", ["0123456789abcdef", "/does/not/exist"])
def test_resume_unknown_run(tmp_path, resume):
    one_line_error(run("pretrain", "--resume", resume, cwd=tmp_path), resume)


def test_resume_refuses_to_change_what_the_checkpoint_was_made_with(tmp_path):
    one_line_error(run("pretrain", "--resume", "anything", "model.widths=8,8", cwd=tmp_path),
                   "model.widths cannot change when resuming")


def test_export_folder_checked_before_training(tmp_path):
    one_line_error(run("pretrain", "--recipe", "debug", "--export", str(tmp_path / "no" / "x.encoder.safetensors"),
                       cwd=tmp_path), "folder does not exist")


def test_vit_patch_size_must_divide_the_images(data_root, tmp_path):
    proc = run("pretrain", "--recipe", "debug", "model.encoder=vit", "model.patch_size=3", cwd=tmp_path,
               env={"SSLSCALE_DATA": data_root})
    one_line_error(proc, "model.patch_size=3", "8-pixel")
    assert not (tmp_path / "runs").exists()  # stopped before any run or MLflow record was made
