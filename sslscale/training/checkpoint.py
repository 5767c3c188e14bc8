"""The checkpoint folder's own files: run state, data position, per-rank checksums, and finding the latest good one.

A checkpoint folder holds DeepSpeed's files (under `ds/`), the encoder as safetensors (rank 0), `state.json`
(rank 0: step, world size, MLflow run id, config), `position.rank0.json` (rank 0: what every rank's completed steps
consumed, as sslscale.data.position writes it; older checkpoints hold one such file per rank, as lists of ids per epoch)
and, from every rank r, `manifest.rank{r}.json` (sha256 of every file rank r wrote).
Ranks may write to different machines; Ray Train merges their folders. `verify` checks every rank's manifest
before anything in the folder is unpickled, so a half-copied or tampered checkpoint is never loaded. Reading works
on any storage (see storage.py); a worker writes its files into a local folder that Ray Train then uploads.
"""
from __future__ import annotations

import os

from sslscale import storage
from sslscale.data.position import Position
from sslscale.errors import SslscaleError
from sslscale.storage import write_json

STATE = "state.json"
ENCODER = "encoder.safetensors"


def write_rank_files(folder: str, rank: int, position: Position | None, state: dict | None) -> None:
    """Write the run's position and state (rank 0: both given), then the manifest of everything under `folder`."""
    if position is not None:
        write_json(os.path.join(folder, f"position.rank{rank}.json"), position.to_json())
    if state is not None:
        write_json(os.path.join(folder, STATE), state)
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if not name.startswith("manifest.rank"):
                files[os.path.relpath(path, folder)] = storage.sha256(path)
    write_json(os.path.join(folder, f"manifest.rank{rank}.json"), files)


def read_state(folder: str) -> dict:
    return storage.read_json(storage.join(folder, STATE))


def verify(folder: str) -> dict:
    """Check every rank's files against its manifest; returns state.json. One-line error on any mismatch."""
    try:
        state = read_state(folder)
        for rank in range(state["world_size"]):
            files = storage.read_json(storage.join(folder, f"manifest.rank{rank}.json"))
            for rel, digest in files.items():
                if storage.sha256(storage.join(folder, rel)) != digest:
                    raise SslscaleError(f"checkpoint {folder}: {rel} does not match its checksum")
    except (OSError, ValueError, KeyError) as e:
        raise SslscaleError(f"checkpoint {folder} is incomplete or unreadable ({e}); resume from an earlier one") from None
    return state


def read_positions(folder: str, samples: int | None = None) -> Position:
    """The union of the checkpoint's position files (either format): what the run consumed. `samples`, the split's
    size now, must be the one the checkpoint was trained on."""
    position = Position(samples)
    for name in storage.listdir(folder):
        if name.startswith("position.rank") and name.endswith(".json"):
            try:
                position.merge(Position.load(storage.read_json(storage.join(folder, name)), samples))
            except ValueError as e:
                raise SslscaleError(f"checkpoint {folder}: {name} does not fit the corpus ({e}); resume with the "
                                    f"corpus the run was trained on") from None
    return position


def latest(run_dir: str) -> str | None:
    """The checkpoint folder under run_dir with the highest step that verifies, or None. Candidates are checked
    newest first (by the step in state.json), so only a torn newest checkpoint costs a second verification."""
    found = []
    for state_path in storage.find(run_dir, STATE):
        try:
            found.append((read_state(storage.parent(state_path))["step"], storage.parent(state_path)))
        except (OSError, ValueError, KeyError):
            continue
    for _, folder in sorted(found, reverse=True):
        try:
            verify(folder)
            return folder
        except SslscaleError:
            continue
    return None
