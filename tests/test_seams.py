"""One seam per heavy dependency (docs/design.md, principle 2): each is imported by one module only."""
import pathlib
import re

SEAMS = {"ray.data": ("stream.py",), "ray.train": ("train.py",), "ray.tune": ("tune.py",), "deepspeed": ("engine.py",),
         # MLflow runs its models-from-code file itself to load a logged encoder: that file subclasses its PythonModel
         "mlflow": ("tracking.py", "mlflow_model.py")}
PLAIN_RAY = "cluster.py"


def _imports(text):
    return re.findall(r"^\s*(?:import|from)\s+([\w.]+)", text, flags=re.M)


def test_heavy_imports_stay_in_their_module():
    pkg = pathlib.Path(__file__).parents[1] / "sslscale"
    for path in pkg.rglob("*.py"):
        for mod in _imports(path.read_text()):
            for seam, owners in SEAMS.items():
                if mod == seam or mod.startswith(seam + "."):
                    assert path.name in owners, f"{path.name} imports {mod}; only {' and '.join(owners)} may"
            if mod == "ray":
                assert path.name in (PLAIN_RAY,), f"{path.name} imports plain ray; only {PLAIN_RAY} may"


def test_public_pretrain_stays_a_function_after_its_module_loads():
    import sslscale
    import sslscale.pretraining  # noqa: F401 - importing a submodule sets a package attribute of its name

    assert callable(sslscale.pretrain) and sslscale.pretrain.__module__ == "sslscale"


def test_ray_datas_scheduling_loop_is_paced_in_a_process_that_imports_the_stream():
    """stream._pace_scheduling replaces the function Ray Data 2.60's loop calls each round: if a Ray upgrade
    renames or moves it, this fails instead of the stream silently spinning a core again."""
    from ray.data._internal.execution import streaming_executor

    from sslscale.data import stream

    assert stream.LOOP_PERIOD_S > 0 and getattr(streaming_executor.process_completed_tasks, "paced", False)


def test_a_training_worker_imports_mlflow_only_when_it_logs():
    """MLflow costs ~1 s of CPU to import; a Ray Train worker of rank > 0 never logs and pays it in every run
    (DeepSpeed's autotuner would import it too). Once asked for, it imports as usual."""
    import subprocess
    import sys

    code = ("import sys, sslscale.training.train; assert 'mlflow' not in sys.modules, 'mlflow imported'; "
            "from sslscale.runtime import tracking; tracking.client('sqlite:///:memory:'); "
            "assert 'mlflow' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_config_loads_no_method_and_no_torch_until_a_methods_keys_are_read():
    """config.py is plain data (issue 28 item 4): a config, its overrides and flat keys outside the method sections,
    and the CLI's parser import no torch (1.4 s here); reading or setting a method's keys (as its recipe does) loads
    that method's file only."""
    import subprocess
    import sys

    code = ("import sys; from sslscale.config import Config, flatten, set_key; from sslscale import cli; "
            "cli._parser().format_help(); "
            "cfg = Config().override(['train.steps=3', 'method.name=byol', 'data.corpus=digits']); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "set_key(cfg, 'method.byol.momentum', '0.9'); "
            "assert 'torch' in sys.modules and 'sslscale.methods.byol' in sys.modules; "
            "assert 'sslscale.methods.dino' not in sys.modules, 'another method loaded'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# docs/design.md's layers, lowest first: a module imports (at its top or inside a function) its own layer's and
# lower layers' modules only, so the folder tree reads as the architecture and nothing runs back up
LAYERS = [{"errors", "redact", "timeline", "plots", "storage", "dist", "schedules"}, {"data"}, {"encoders"},
          {"methods"}, {"config", "checks"}, {"runtime"}, {"training"}, {"evaluation"}, {"pretraining"}, {"sweeps"},
          {"cli", "__init__"}]


def _layer(dotted: str) -> int:
    top = dotted.split(".")[1] if "." in dotted else "__init__"
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_no_import_runs_back_up_a_layer():
    pkg = pathlib.Path(__file__).parents[1] / "sslscale"
    found = []
    for path in sorted(pkg.rglob("*.py")):
        own = "sslscale." + ".".join(path.relative_to(pkg).with_suffix("").parts)
        text = path.read_text()
        targets = [m for m in _imports(text) if m.startswith("sslscale.")]
        targets += [f"sslscale.{name.strip()}" for names in re.findall(r"^\s*from sslscale import ([\w, ]+)", text,
                                                                       flags=re.M) for name in names.split(",")]
        found += [f"{own} imports {t}" for t in targets if _layer(t) > _layer(own)]
    assert not found, "imports that run up a layer (docs/design.md):\n" + "\n".join(found)
