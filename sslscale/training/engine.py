"""DeepSpeed, in one place: device and precision choice, wrapping a method, the optimizer step, checkpoints.

Usable without Ray: a plain process gets a one-member gloo group. Under Ray Train the engine reuses the process
group Ray made. ZeRO 0-3: stage 3 partitions the parameters themselves (teachers included), so whatever reads
whole weights outside a forward pass (the encoder export, tests) does it inside `Engine.gathered`. Precision:
`auto` is bf16 on a GPU and fp32 on a CPU (these CPUs have no bf16 units; bf16 ran ~13x slower). Parameters stay
contiguous: DeepSpeed cannot broadcast channels_last parameters.
"""
from __future__ import annotations

import os
import pickle
import socket
import sys

import torch

if not torch.cuda.is_available():  # said rather than detected: DeepSpeed skips its "Setting accelerator to CPU" warning
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

# DeepSpeed's autotuner imports MLflow, if it can, for its own logging (~1 s of CPU in every worker of every run);
# we never run the autotuner, and a worker that logs imports MLflow itself (tracking.client)
_hidden = sys.modules.setdefault("mlflow", None) is None
import deepspeed  # noqa: E402

if _hidden:
    del sys.modules["mlflow"]
import torch.distributed as dist  # noqa: E402
from deepspeed.runtime.fp16.loss_scaler import LossScaler  # noqa: E402
from deepspeed.runtime.zero.config import ZeroStageEnum  # noqa: E402
from deepspeed.utils.tensor_fragment import fragment_address  # noqa: E402

from sslscale.data.position import Position  # noqa: E402
from sslscale.errors import SslscaleError  # noqa: E402
from sslscale.methods.base import Method  # noqa: E402
from sslscale.schedules import cosine_weight_decay, warmup_cosine  # noqa: E402
from sslscale.training.optim import build_optimizer, set_learning_rates, set_weight_decay  # noqa: E402

DS_TAG = "ds"
STREAM_FIELDS = ("id", "epoch")  # what the stream adds to every row for positions (position.py), never moved
# The only non-tensor types DeepSpeed's checkpoint files hold (ZeRO optimizer state); nothing else is unpickled.
SAFE_GLOBALS = [LossScaler, ZeroStageEnum, fragment_address]
# DeepSpeed's CPU backend JIT-builds a shared-memory all-reduce op when it starts (~40 s the first time on a fresh
# machine, every fresh clone's first run) that only its inference tensor parallelism calls (inference_all_reduce);
# training's collectives go through torch.distributed. Marked incompatible, it is never built.
deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def weights_only_loads(checkpoint_engine) -> None:
    """Make a DeepSpeed checkpoint engine read with torch.load(weights_only=True): tensors, containers and
    SAFE_GLOBALS only, so a checkpoint cannot run code when it is loaded."""
    def load(path: str, map_location=None):
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)

    checkpoint_engine.load = load


def pick_device(use_gpu: str = "auto") -> torch.device:
    if use_gpu != "false" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def pick_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: torch.device) -> None:
    """Reuse an existing process group (Ray Train's), else start a one-process group for plain use. The rendezvous
    address it sets is removed again once the group exists, so that processes this one starts later (a local Ray
    instance, subprocesses) do not inherit a port it holds; RANK, LOCAL_RANK and WORLD_SIZE stay (DeepSpeed reads
    them after start-up)."""
    rendezvous = []
    if not dist.is_initialized():
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(_free_port())}.items():
            if key not in os.environ:
                os.environ[key] = value
                rendezvous += [key] if key.startswith("MASTER_") else []
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo",
                               auto_mpi_discovery=False, verbose=False)
    for key in rendezvous:
        os.environ.pop(key, None)


def ds_config(cfg, precision: str, world: int) -> dict:
    micro = cfg.data.batch_size // (world * cfg.engine.grad_accum)
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": cfg.engine.grad_accum,
        "train_batch_size": micro * cfg.engine.grad_accum * world,
        "zero_optimization": {"stage": cfg.engine.zero_stage,
                              **({"stage3_param_persistence_threshold": cfg.engine.zero3_persist}
                                 if cfg.engine.zero_stage == 3 else {})},
        "bf16": {"enabled": precision == "bf16"},
        "gradient_clipping": cfg.optim.clip,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class Engine:
    """A pretext method wrapped by DeepSpeed; `train_step` runs one optimizer step over grad_accum micro-batches."""

    def __init__(self, method: torch.nn.Module, cfg):
        self.cfg = cfg
        self.tokenizer: bytes | None = None  # the corpus's tokenizer.json, which each exported encoder carries
        self.device = pick_device(cfg.train.use_gpu)
        self.precision = pick_precision(cfg.engine.precision, self.device)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self._check_zero3(method)
        self.inputs = method.inputs(cfg, method.sizes())  # field -> kind, what to_device moves
        init_distributed(self.device)
        self.optimizer = optimizer = build_optimizer(method, cfg.optim)
        config = ds_config(cfg, self.precision, dist.get_world_size())
        # no LR scheduler object: train_step sets every schedule from the step (_apply_schedules)
        self.ds, _, _, _ = deepspeed.initialize(model=method, optimizer=optimizer, config=config)
        weights_only_loads(self.ds.checkpoint_engine)
        for buf in self.method.buffers():  # DeepSpeed casts parameters only; CPU BatchNorm wants one dtype
            if buf.is_floating_point():
                buf.data = buf.data.to(self.dtype)
        for name in getattr(self.method, "FP32_MODULES", ()):  # teachers: never trained, updated by tiny steps
            getattr(self.method, name).float()

    def _check_zero3(self, method: torch.nn.Module) -> None:
        """ZeRO-3 partitions a teacher like any parameter, in the training dtype: in bf16 its EMA steps (~1e-3)
        would round away, so that combination is refused rather than silently frozen."""
        if self.cfg.engine.zero_stage == 3 and self.precision == "bf16" and getattr(method, "FP32_MODULES", ()):
            raise SslscaleError(f"method.name={self.cfg.method.name} keeps an fp32 EMA teacher, which ZeRO-3 would "
                                f"partition in bf16: use engine.zero_stage=1 or 2 with bf16, or engine.precision=fp32")

    def _after_step(self, step: int) -> None:
        """The method's after_step (EMA teachers move). Under ZeRO-3, for a method that has one, it runs with the
        method's parameters gathered, and rank 0's result is broadcast and re-partitioned on exit
        (GatheredParameters with a modifier rank). Updating only each rank's slice is not enough: tensors of up to
        engine.zero3_persist elements stay whole on every rank, and their whole copy would go stale. This
        materialises the method and broadcasts it once per step."""
        if self.cfg.engine.zero_stage == 3 and type(self.method).after_step is not Method.after_step:
            with deepspeed.zero.GatheredParameters(list(self.method.parameters()), modifier_rank=0):
                self.method.after_step(step)
        else:
            self.method.after_step(step)

    def gathered(self, module: torch.nn.Module):
        """Context in which module's parameters hold their full values on every rank (a collective under ZeRO-3,
        where they are partitioned; nothing to do otherwise). Under ZeRO-3, changes made inside are dropped."""
        return deepspeed.zero.GatheredParameters(list(module.parameters()))

    @property
    def method(self) -> torch.nn.Module:
        return self.ds.module

    @property
    def step(self) -> int:
        """Optimizer steps taken so far, skipped ones included (DeepSpeed's count, restored from a checkpoint): the
        0-based index of the next step, from which every schedule is computed."""
        return self.ds.global_steps

    def lr(self) -> float:
        """The peak-group learning rate of the next step (warmup then cosine, schedules.warmup_cosine)."""
        o = self.cfg.optim
        return warmup_cosine(self.step + 1, total=self.cfg.train.steps, warmup=o.warmup_steps, peak=o.lr,
                             floor_ratio=o.min_lr_ratio)

    def _apply_schedules(self, lr: float) -> dict:
        """Set this step's learning rate `lr` (self.lr()) on every param group (times its lr_scale; 0 while the step
        is below its frozen_steps) and, when optim.weight_decay_end asks for one, its weight decay: pure functions of
        the step, so a resumed run recomputes them. Returns the weight decay for the logs when scheduled."""
        o = self.cfg.optim
        set_learning_rates(self.optimizer, lr, self.step)
        if o.weight_decay_end < 0:
            return {}
        wd = cosine_weight_decay(self.step, self.cfg.train.steps, o.weight_decay, o.weight_decay_end)
        set_weight_decay(self.optimizer, wd)
        return {"weight_decay": wd}

    def to_device(self, batch: dict) -> dict:
        """The fields the method declares (Method.inputs) on the engine's device: "pixels" (uint8 (N, C, H, W)) as
        floats in [0, 1] in its dtype, "ids" as they are; the stream's bookkeeping (STREAM_FIELDS) stays on the
        CPU. A field the method does not declare is one line naming both."""
        out = {}
        for key, value in batch.items():
            kind = self.inputs.get(key)
            if kind is None and key not in STREAM_FIELDS:
                raise SslscaleError(f"{type(self.method).__name__} got batch field {key!r}, which it does not "
                                    f"declare (it takes {', '.join(self.inputs)}): add it to its `inputs`")
            value = value if kind is None else torch.as_tensor(value).to(self.device, non_blocking=True)
            out[key] = value.to(self.dtype).div_(255) if kind == "pixels" else value
        return out

    def _skipped(self) -> int:
        """Steps not applied so far: by our optimizer guard, or by DeepSpeed's own overflow check (ZeRO)."""
        return self.optimizer.skipped + self.ds.skipped_steps

    def _forward_backward(self, micro_batches: list[dict], inject_nan: bool) -> tuple[dict, torch.Tensor]:
        """Every micro-batch forward and backward, with DeepSpeed stepping at the accumulation boundary.
        Returns the last micro-batch's outputs and the mean loss."""
        losses, out = [], {}
        for i, batch in enumerate(micro_batches):
            inputs = self.to_device(batch)
            if inject_nan and i == 0:  # a non-finite input, as bad data or an overflow would make
                inputs["view_0"] = inputs["view_0"] * float("nan")
            out = self.ds(inputs, self.step)
            self.ds.backward(out["loss"])
            self.ds.step()
            losses.append(out["loss"].detach().float())
        return out, torch.stack(losses).mean()

    def train_step(self, micro_batches: list[dict], *, inject_nan: bool = False, log: bool = True) -> dict:
        """Forward, backward and (at the accumulation boundary) the optimizer step. Returns `skipped` (a bool),
        `lr` (the rate this step used) and `embeddings` (this rank's last micro-batch, detached); when `log`, also
        the step's scalars as floats, averaged over ranks in one all-reduce (`loss`: the mean over every rank's
        micro-batches, the global batch's loss), with `grad_norm` and a scheduled `weight_decay`. A step not
        logged reads nothing back from the device but the non-finite guard's one flag.

        A non-finite gradient on any rank (a non-finite loss makes one) skips the step everywhere: weights,
        optimizer state, teachers and BatchNorm statistics stay as they were; the LR schedule still advances (it
        follows the step count). `inject_nan` poisons this rank's input (fault injection for tests, see
        faults.py)."""
        self.ds.train()
        lr, skipped = self.lr(), self._skipped()  # the rate this step uses
        buffers = [b.detach().clone() for b in self.method.buffers()]  # BatchNorm statistics move in forward
        weight_decay = self._apply_schedules(lr)
        out, loss = self._forward_backward(micro_batches, inject_nan)
        result = {"skipped": self._skipped() > skipped, "lr": lr, "embeddings": out["embeddings"]}
        if result["skipped"]:
            for buf, saved in zip(self.method.buffers(), buffers):
                buf.data.copy_(saved)
        else:
            self._after_step(self.ds.global_steps)
        if log:
            result.update(self._mean_over_ranks({**{k: v for k, v in out.items() if k not in ("loss", "embeddings")},
                                                 "loss": loss}), **weight_decay)
            grad_norm = self.ds.get_global_grad_norm()
            if grad_norm is not None:
                result["grad_norm"] = float(grad_norm)
        return result

    def _mean_over_ranks(self, scalars: dict) -> dict[str, float]:
        """Every rank's scalars averaged, in one all-reduce and one read back (torchtitan logs the same way)."""
        values = torch.stack([torch.as_tensor(v, device=self.device).detach().float().reshape(())
                              for v in scalars.values()])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(values)
            values /= dist.get_world_size()
        return dict(zip(scalars, values.tolist()))

    def save(self, folder: str, *, rank: int, position: Position | None, state: dict | None) -> None:
        """Collective: every rank writes its DeepSpeed shard and manifest into its own `folder`; rank 0 the run's
        position and state too."""
        # here, not at the top: checkpoint and export need pyarrow (storage.py) and safetensors, which training alone
        # does not (gpu_check.py)
        from sslscale.training import checkpoint
        from sslscale.training.export import save_encoder

        self.ds.save_checkpoint(folder, tag=DS_TAG, save_latest=False)
        exported = self.method if self.method.tower_modules() else self.method.encoder  # what the export holds
        with self.gathered(exported):  # every rank joins the gather; one writes
            if state is not None:
                save_encoder(self.method.encoder, os.path.join(folder, checkpoint.ENCODER), method=self.method,
                             tokenizer=self.tokenizer)
        checkpoint.write_rank_files(folder, rank, position, state)

    def load(self, folder: str) -> dict:
        """Verify the folder's checksums, then restore weights, optimizer state and DeepSpeed's step count (every
        schedule follows from it). Returns state.json."""
        from sslscale.training import checkpoint

        state = checkpoint.verify(folder)
        try:
            self.ds.load_checkpoint(folder, tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False)
        except pickle.UnpicklingError as e:
            raise SslscaleError(f"checkpoint {folder} holds objects other than tensors ({str(e).splitlines()[0]}); "
                                f"refusing to unpickle them: resume from a checkpoint sslscale wrote") from None
        except (ValueError, RuntimeError) as e:  # torch's words (ZeRO-0) and DeepSpeed's (ZeRO 1-2)
            if not any(words in str(e) for words in ("parameter group", "layout does not match")):
                raise
            raise SslscaleError(f"checkpoint {folder} has another optimizer layout than this run "
                                f"({str(e).splitlines()[0][:120]}); a DINO run "
                                "with method.dino.freeze_last_layer > 0 checkpointed before sslscale froze the prototypes "
                                "by param group cannot resume: start it again") from None
        return state
