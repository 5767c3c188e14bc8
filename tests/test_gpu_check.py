"""benchmarks/gpu_check.py --tiny on a CPU, run as on the device machine (no Ray, MLflow or pyarrow there; no
DeepSpeed for the plain-torch fallback), and the bottleneck ResNet-50 it measures."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslscale.config import Config
from sslscale.data import corpus
from sslscale.encoders import build_encoder, encoder_kwargs
from sslscale.encoders.resnet import ResNet50
from sslscale.training.export import load_encoder, save_encoder

ROOT = Path(__file__).resolve().parents[1]
DEVICE_LACKS = ["ray", "mlflow", "pyarrow", "safetensors"]
# a sitecustomize module: Python imports it at start-up, before the script, in every process it starts
BLOCKER = """import sys


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {names!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)


sys.meta_path.insert(0, Blocker())
"""
POSITIVE = ["images_per_s", "step_ms", "flops_per_image", "tflops", "mfu", "peak_mem_gib", "encoder_params"]


@pytest.fixture(scope="module")
def rgb_corpus(tmp_path_factory):
    """12 random RGB pictures prepared at 32 px, as `sslscale data prepare` writes them."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    (tmp / "pictures").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp / "pictures" / f"{i:02d}.png")
    corpus.prepare(str(tmp / "pictures"), tmp / "corpus", image_size=32, progress=False)
    return tmp / "corpus"


def run_tiny(tmp_path: Path, corpus_dir: Path, blocked: list[str]) -> dict:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(names=tuple(blocked)))
    # a fresh process group of its own: this pytest process may hold the port an earlier engine test put in
    # MASTER_PORT (engine.init_distributed sets it when it is missing)
    dist_env = {"OUT", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in dist_env}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    for name in blocked:
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True)
        assert probe.returncode != 0, f"the blocker let {name} through"
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--tiny", "--corpus", str(corpus_dir),
                           "--out", str(out), "--peak-tflops", "1"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for line in report["lines"]:
        assert "error" not in line, line
        assert all(line[key] > 0 for key in POSITIVE), line
        assert math.isfinite(line["loss"]), line
    data = report["lines"][-1]
    assert data["data"] == "corpus" and data["loader_images_per_s"] > 0 and report["skipped"] == []
    assert report["versions"]["torch"] == torch.__version__ and report["peak_source"] == "--peak-tflops 1"
    return report


@pytest.mark.slow
def test_tiny_check_runs_the_deepspeed_engine_without_ray_mlflow_pyarrow(tmp_path, rgb_corpus):
    report = run_tiny(tmp_path, rgb_corpus, DEVICE_LACKS)
    assert report["versions"]["engine"] == "deepspeed" and report["versions"]["deepspeed"]
    assert [line["name"] for line in report["lines"]] == ["mae_vit_tiny", "simclr_r50_z0", "simclr_r50_z1",
                                                          "simclr_r50_z2", "simclr_r50_data"]
    assert [line["zero_stage"] for line in report["lines"]] == [1, 0, 1, 2, 1]
    assert report["lines"][1]["encoder"] == "resnet50" and report["lines"][1]["encoder_kwargs"] == {"width": 8}


@pytest.mark.slow
def test_tiny_check_falls_back_to_plain_torch_without_deepspeed(tmp_path, rgb_corpus):
    report = run_tiny(tmp_path, rgb_corpus, [*DEVICE_LACKS, "deepspeed"])
    assert report["versions"]["engine"].startswith("torch: DeepSpeed cannot be imported")
    assert [line["name"] for line in report["lines"]] == ["mae_vit_tiny", "simclr_r50", "simclr_r50_data"]
    assert all(line["zero_stage"] is None for line in report["lines"])


@pytest.fixture
def one_thread():
    """ResNet-50 on a shared 2-core machine: one intra-op thread is faster than two that wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_resnet50_is_torchvisions_layout(one_thread):
    torch.manual_seed(0)
    model = build_encoder("resnet50", in_channels=3, image_size=64)
    # torchvision's resnet50 has 25,557,032 parameters, 2,049,000 of them in its 1000-way classifier
    assert sum(p.numel() for p in model.parameters()) == 23_508_032 and model.feature_dim == 2048
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 2048)
    first_of_stage2 = model.blocks[3]  # v1.5: the stride sits on the 3x3 convolution
    assert first_of_stage2.conv1.stride == (1, 1) and first_of_stage2.conv2.stride == (2, 2)
    assert all(p.is_contiguous() for p in model.parameters())
    narrow = ResNet50(in_channels=1, image_size=32, width=8)
    assert narrow(torch.rand(3, 1, 32, 32)).shape == (3, 256)
    cfg = Config()
    cfg.model.encoder = "resnet50"
    assert encoder_kwargs(cfg.model) == {}


def test_resnet50_export_round_trip(tmp_path, one_thread):
    torch.manual_seed(0)
    model = ResNet50(in_channels=3, image_size=32)
    model(torch.rand(4, 3, 32, 32))  # moves the BatchNorm statistics away from their initial values
    model.eval()
    path = save_encoder(model, str(tmp_path / "r50.encoder.safetensors"))
    loaded = load_encoder(path)
    x = torch.rand(2, 3, 32, 32)
    assert isinstance(loaded, ResNet50) and loaded.spec() == model.spec() and not loaded.training
    assert torch.allclose(loaded(x), model(x), atol=1e-5)
