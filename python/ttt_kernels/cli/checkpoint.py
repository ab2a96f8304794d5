"""Checkpoints: a directory whose ``manifest.json``, written last, lists every file with its size and SHA-256.

Layout of a checkpoint directory (``N`` is the step, zero-padded):

- ``config.json``: the model's :class:`~ttt_kernels.model.TTTE2EConfig` (``TTTE2EConfig.from_json``);
- ``model-N.safetensors``: the parameters (float32, ``model.state_dict()`` names);
- ``optimizer-N.pt``: the AdamW state (``torch.save`` of ``optimizer.state_dict()``);
- ``trainer-N.json``: the step, the training settings, the loss/validation history;
- ``rng-N.pt``: torch's RNG states and the training-window sampler's state;
- ``manifest.json``: format, step and, for each of the files above, its name, size and SHA-256.

Every file is written to a temporary name in the same directory and moved into place with ``os.replace``; the
manifest goes last, so it always describes a complete set of files: a reader that finds the manifest and matching
checksums has a complete checkpoint, anything else is rejected. Files of the previous step are deleted only after
the new manifest is in place, so an interrupted save leaves the previous checkpoint intact.
"""

import hashlib
import json
import os
import re
import tempfile

import torch

from ttt_kernels.model import TTTE2EConfig, TTTE2EModel

from .errors import CLIError

FORMAT = "ttt-kernels-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
_OWN_FILE = re.compile(r"^(config\.json|(model|optimizer|trainer|rng)-\d+\.(safetensors|pt|json)|\.tmp-.*)$")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(directory: str, name: str, write) -> None:
    """write(tmp_path) then os.replace(tmp_path, directory/name); the temporary file is removed on failure."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_text(text: str):
    def write(path):
        with open(path, "w") as f:
            f.write(text)

    return write


def _write_bytes(make):
    def write(path):
        with open(path, "wb") as f:
            f.write(make())

    return write


def _torch_save(obj):
    def write(path):
        with open(path, "wb") as f:  # a file object: torch names the archive after a path's basename
            torch.save(obj, f)

    return write


def is_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, MANIFEST))


def save(directory: str, model: TTTE2EModel, *, step: int, trainer: dict, optimizer=None, rng: dict | None = None):
    """Writes a checkpoint of ``model`` (and the optimizer / RNG state for resuming) to ``directory``."""
    from safetensors.torch import save as safetensors_bytes

    created = not os.path.exists(directory)
    os.makedirs(directory, exist_ok=True)
    tag = f"{step:08d}"
    files = {"config": "config.json", "model": f"model-{tag}.safetensors", "trainer": f"trainer-{tag}.json"}
    if optimizer is not None:
        files["optimizer"] = f"optimizer-{tag}.pt"
    if rng is not None:
        files["rng"] = f"rng-{tag}.pt"
    previous = _manifest_names(directory)
    config_text = model.config.to_json() + "\n"
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    writers = {
        # Serialized here and written into our own temporary file: safetensors' save_file would go through a
        # temporary file of its own (".tmpXXXX"), which a killed save would leave behind.
        "model": _write_bytes(lambda: safetensors_bytes(state, metadata={"format": "pt"})),
        "trainer": _write_text(json.dumps(trainer, indent=1) + "\n"),
        "optimizer": _torch_save(_to_cpu(optimizer.state_dict())) if optimizer is not None else None,
        "rng": _torch_save(rng) if rng is not None else None,
    }
    written = []
    try:
        if _read_text(os.path.join(directory, files["config"])) != config_text:
            _atomic_write(directory, files["config"], _write_text(config_text))
            written.append(files["config"])
        for role in ("model", "trainer", "optimizer", "rng"):
            if role in files:
                _atomic_write(directory, files[role], writers[role])
                written.append(files[role])
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "step": step,
            "files": {
                role: {"name": name, "bytes": os.path.getsize(p), "sha256": _sha256(p)}
                for role, name in files.items()
                for p in [os.path.join(directory, name)]
            },
        }
        _atomic_write(directory, MANIFEST, _write_text(json.dumps(manifest, indent=1) + "\n"))
    except BaseException as e:
        for name in written:  # this save's files, unless the previous checkpoint uses them (same step)
            if name not in previous and os.path.exists(os.path.join(directory, name)):
                os.remove(os.path.join(directory, name))
        if created and not os.listdir(directory):
            os.rmdir(directory)
        if isinstance(e, OSError):  # e.g. the disk is full
            kept = " (the previous checkpoint there is intact)" if previous else ""
            raise CLIError(f"cannot save a checkpoint to {directory}: {e.strerror or e}{kept}") from None
        raise
    keep = set(files.values()) | {MANIFEST}
    for name in os.listdir(directory):  # files of earlier steps, left-over temporaries
        if name not in keep and _OWN_FILE.match(name):
            os.remove(os.path.join(directory, name))


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _manifest_names(directory: str) -> set:
    """File names the directory's current manifest references (empty if none or unreadable)."""
    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            return {entry["name"] for entry in json.load(f)["files"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _check_manifest(directory: str, manifest: dict) -> None:
    """The manifest's schema: an integer step >= 0 and, per role, a plain file name (no directory part, so nothing
    outside the checkpoint is ever read), an integer size and a SHA-256 hex digest. One clear line otherwise."""
    where = f"checkpoint {directory}: {MANIFEST}"
    step = manifest.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CLIError(f"{where}: step must be an integer >= 0, got {step!r}")
    for role, entry in manifest["files"].items():
        if not isinstance(entry, dict):
            raise CLIError(f"{where}: the entry of {role!r} must be an object, got {type(entry).__name__}")
        name, size, digest = entry.get("name"), entry.get("bytes"), entry.get("sha256")
        if not isinstance(name, str) or not name or name in (".", "..") or name != os.path.basename(name):
            raise CLIError(f"{where}: the name of {role!r} must be a file name inside the checkpoint, got {name!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise CLIError(f"{where}: the size of {role!r} must be an integer >= 0, got {size!r}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise CLIError(f"{where}: the sha256 of {role!r} must be 64 hex digits, got {digest!r}")


class Checkpoint:
    """A verified checkpoint directory: its manifest has been read and every file's size and SHA-256 checked."""

    def __init__(self, directory: str):
        self.directory = directory
        if not os.path.exists(directory):
            raise CLIError(f"checkpoint {directory} does not exist")
        if not os.path.isdir(directory):
            raise CLIError(f"checkpoint {directory} is not a directory (expected a checkpoint written by train)")
        path = os.path.join(directory, MANIFEST)
        if not os.path.isfile(path):
            raise CLIError(
                f"checkpoint {directory} is incomplete or not a checkpoint: it has no {MANIFEST} (written last by "
                "train)"
            )
        try:
            with open(path) as f:
                manifest = json.load(f)
            files = manifest["files"]
            if manifest.get("format") != FORMAT or not all(r in files for r in ("config", "model", "trainer")):
                raise ValueError
        except (OSError, ValueError, KeyError, TypeError):
            raise CLIError(f"checkpoint {directory}: {MANIFEST} is corrupt (not a {FORMAT} manifest)") from None
        if manifest.get("version") != VERSION:
            raise CLIError(f"checkpoint {directory}: format version {manifest.get('version')!r}, expected {VERSION}")
        _check_manifest(directory, manifest)
        for role, entry in files.items():
            file = os.path.join(directory, entry["name"])
            if not os.path.isfile(file):
                raise CLIError(f"checkpoint {directory} is incomplete: {entry['name']} ({role}) is missing")
            if os.path.getsize(file) != entry["bytes"] or _sha256(file) != entry["sha256"]:
                raise CLIError(f"checkpoint {directory} is corrupt: {entry['name']} ({role}) fails its checksum")
        self.manifest, self.step = manifest, int(manifest["step"])
        self._files = {role: os.path.join(directory, entry["name"]) for role, entry in files.items()}
        try:
            with open(self._files["config"]) as f:
                self.config = TTTE2EConfig.from_json(f.read())
            with open(self._files["trainer"]) as f:
                self.trainer = json.load(f)
        except (ValueError, TypeError) as e:
            raise CLIError(f"checkpoint {directory}: invalid config.json or trainer state: {e}") from None
        if not isinstance(self.trainer, dict) or not isinstance(self.trainer.get("settings", {}), dict):
            raise CLIError(f"checkpoint {directory}: invalid trainer state (expected a JSON object with settings)")
        if self.resumable and not all(k in self.trainer for k in ("settings", "history", "validation")):
            raise CLIError(f"checkpoint {directory}: the trainer state lacks settings, history or validation")

    @property
    def resumable(self) -> bool:
        return "optimizer" in self._files and "rng" in self._files

    def load_model(self, model: TTTE2EModel) -> None:
        from safetensors.torch import load_file

        try:
            state = load_file(self._files["model"])
            model.load_state_dict(state, strict=True)
        except Exception as e:  # safetensors raises its own error types
            raise CLIError(f"checkpoint {self.directory}: cannot load the model weights: {e}") from None

    def load_optimizer_state(self) -> dict:
        return torch.load(self._files["optimizer"], map_location="cpu", weights_only=True)

    def load_rng(self) -> dict:
        return torch.load(self._files["rng"], map_location="cpu", weights_only=True)
