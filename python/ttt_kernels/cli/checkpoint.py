"""Checkpoints: a directory whose ``manifest.json``, written last, lists every file with its size and SHA-256.

Layout of a checkpoint directory (``N`` is the step, zero-padded):

- ``config.json``: the model's :class:`~ttt_kernels.model.TTTE2EConfig` (``TTTE2EConfig.from_json``);
- ``model-N.safetensors``: the parameters (float32, ``model.state_dict()`` names);
- ``optimizer-N.pt``: the AdamW state (``torch.save`` of ``optimizer.state_dict()``);
- ``trainer-N.json``: the step, the training settings, the loss/validation history;
- ``rng-N.pt``: torch's RNG states and the training-window sampler's state;
- ``manifest.json``: format, step and, for each of the files above, its name, size and SHA-256.

A run on several processes (ttt_kernels.distributed) writes, instead of the model and optimizer files, a sharded
``state-N-XXXXXXXX/`` directory (``torch.distributed.checkpoint``: ``.metadata`` and one ``__R_0.distcp`` per rank,
keys ``model.<parameter>`` and ``optimizer.state.<parameter>.<moment>``; XXXXXXXX a random tag), which any number
of processes reads back, one included; its manifest entry lists each of its files' size and SHA-256.

Every file is written to a temporary name in the same directory and moved into place with ``os.replace``; the
manifest goes last, so it always describes a complete set of files: a reader that finds the manifest and matching
checksums has a complete checkpoint, anything else is rejected. Files of the previous step are deleted only after
the new manifest is in place, so an interrupted save leaves the previous checkpoint intact.
"""

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import warnings

import torch

from ttt_kernels.model import TTTE2EConfig, TTTE2EModel

from .errors import CLIError

FORMAT = "ttt-kernels-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
_STATE_NAME = r"state-\d+-[0-9a-f]{8}"  # a sharded save's directory
_STATE_DIR = re.compile(f"^{_STATE_NAME}$")
_OWN_FILE = re.compile(
    rf"^(config\.json|(model|optimizer|trainer|rng)-\d+\.(safetensors|pt|json)|{_STATE_NAME}|\.tmp-.*)$"
)


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


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def _file_entry(path: str) -> dict:
    return {"bytes": os.path.getsize(path), "sha256": _sha256(path)}


def _manifest_entry(directory: str, name: str) -> dict:
    """A file's name, size and SHA-256; a sharded state directory's name and, per file, its size and SHA-256."""
    path = os.path.join(directory, name)
    if os.path.isdir(path):
        return {"name": name, "files": {f: _file_entry(os.path.join(path, f)) for f in sorted(os.listdir(path))}}
    return {"name": name, **_file_entry(path)}


def save(
    directory: str,
    model: TTTE2EModel,
    *,
    step: int,
    trainer: dict,
    optimizer=None,
    rng: dict | None = None,
    state_dir: str | None = None,
):
    """Writes a checkpoint of ``model`` (and the optimizer / RNG state for resuming) to ``directory``. ``state_dir``:
    the model and optimizer are already in that sharded state directory (save_sharded), which the manifest lists."""
    from safetensors.torch import save as safetensors_bytes

    created = not os.path.exists(directory)
    os.makedirs(directory, exist_ok=True)
    tag = f"{step:08d}"
    files = {"config": "config.json", "trainer": f"trainer-{tag}.json"}
    if state_dir is not None:
        files["state"] = state_dir
    else:
        files["model"] = f"model-{tag}.safetensors"
        if optimizer is not None:
            files["optimizer"] = f"optimizer-{tag}.pt"
    if rng is not None:
        files["rng"] = f"rng-{tag}.pt"
    previous = _manifest_names(directory)
    config_text = model.config.to_json() + "\n"
    writers = {
        # Serialized here and written into our own temporary file: safetensors' save_file would go through a
        # temporary file of its own (".tmpXXXX"), which a killed save would leave behind.
        "model": _write_bytes(lambda: safetensors_bytes(_float_state(model), metadata={"format": "pt"})),
        "trainer": _write_text(json.dumps(trainer, indent=1) + "\n"),
        "optimizer": _torch_save(_to_cpu(optimizer.state_dict())) if optimizer is not None else None,
        "rng": _torch_save(rng) if rng is not None else None,
    }
    written = []
    try:
        if _read_text(os.path.join(directory, files["config"])) != config_text:
            _atomic_write(directory, files["config"], _write_text(config_text))
            written.append(files["config"])
        if state_dir is not None:
            written.append(state_dir)
        for role in ("model", "trainer", "optimizer", "rng"):
            if role in files:
                _atomic_write(directory, files[role], writers[role])
                written.append(files[role])
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "step": step,
            "files": {role: _manifest_entry(directory, name) for role, name in files.items()},
        }
        _atomic_write(directory, MANIFEST, _write_text(json.dumps(manifest, indent=1) + "\n"))
    except BaseException as e:
        for name in written:  # this save's files, unless the previous checkpoint uses them (same step)
            if name not in previous and os.path.exists(os.path.join(directory, name)):
                _remove(os.path.join(directory, name))
        if created and not os.listdir(directory):
            os.rmdir(directory)
        if isinstance(e, OSError):  # e.g. the disk is full
            kept = " (the previous checkpoint there is intact)" if previous else ""
            raise CLIError(f"cannot save a checkpoint to {directory}: {e.strerror or e}{kept}") from None
        raise
    keep = set(files.values()) | {MANIFEST}
    for name in os.listdir(directory):  # files of earlier steps, left-over temporaries
        if name not in keep and _OWN_FILE.match(name):
            _remove(os.path.join(directory, name))


def _float_state(model: TTTE2EModel) -> dict:
    return {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}


def save_sharded(directory: str, model: TTTE2EModel, optimizer, *, step: int, trainer: dict, rng: dict) -> None:
    """save() of a run on several processes, called by every rank: each writes its shards of the model and of the
    optimizer state (torch.distributed.checkpoint) into a temporary directory in ``directory`` (a file system every
    rank sees), then rank 0 moves it into place and writes the rest and the manifest. ``model``: the TTTE2EModel,
    sharded (fully_shard) or not (under DDP). Every rank raises the same CLIError if any rank's part fails."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    main = dist.get_rank() == 0
    name = [f"state-{step:08d}-{secrets.token_hex(4)}" if main else None]
    dist.broadcast_object_list(name, src=0)  # every rank writes into the same directory
    name = name[0]
    tmp = os.path.join(directory, ".tmp-" + name)
    error = None
    try:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp)
    except Exception as e:  # torch.distributed.checkpoint raises the failure of any rank on every rank
        error = f"cannot save a checkpoint to {directory}: {e}"
    if error is None and main:
        try:
            os.replace(tmp, os.path.join(directory, name))
            save(directory, model, step=step, trainer=trainer, rng=rng, state_dir=name)
        except CLIError as e:
            error = str(e)
        except OSError as e:
            error = f"cannot save a checkpoint to {directory}: {e.strerror or e}"
    if main and os.path.exists(tmp):
        shutil.rmtree(tmp)
    agree(error)


def agree(error: str | None) -> None:
    """A collective check: raises CLIError(the first rank's message) on every rank if any rank passes a message."""
    import torch.distributed as dist

    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, error)
    first = next((m for m in messages if m), None)
    if first is not None:
        raise CLIError(first)


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
        name = entry.get("name")
        if not isinstance(name, str) or not name or name in (".", "..") or name != os.path.basename(name):
            raise CLIError(f"{where}: the name of {role!r} must be a file name inside the checkpoint, got {name!r}")
        if role != "state":
            _check_file_entry(where, role, entry)
            continue
        if not _STATE_DIR.match(name) or not isinstance(entry.get("files"), dict) or not entry["files"]:
            raise CLIError(f"{where}: 'state' must name a state-N-XXXXXXXX directory and list its files")
        for file, file_entry in entry["files"].items():
            what = f"state/{file}"
            if not isinstance(file, str) or file in ("", ".", "..") or file != os.path.basename(file):
                raise CLIError(f"{where}: {what!r} must be a file name inside the state directory")
            if not isinstance(file_entry, dict):
                raise CLIError(f"{where}: the entry of {what!r} must be an object, got {type(file_entry).__name__}")
            _check_file_entry(where, what, file_entry)


def _check_file_entry(where: str, what: str, entry: dict) -> None:
    size, digest = entry.get("bytes"), entry.get("sha256")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise CLIError(f"{where}: the size of {what!r} must be an integer >= 0, got {size!r}")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise CLIError(f"{where}: the sha256 of {what!r} must be 64 hex digits, got {digest!r}")


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
            if manifest.get("format") != FORMAT or not all(r in files for r in ("config", "trainer")):
                raise ValueError
            if ("model" in files) == ("state" in files):  # the weights, in one form
                raise ValueError
        except (OSError, ValueError, KeyError, TypeError):
            raise CLIError(f"checkpoint {directory}: {MANIFEST} is corrupt (not a {FORMAT} manifest)") from None
        if manifest.get("version") != VERSION:
            raise CLIError(f"checkpoint {directory}: format version {manifest.get('version')!r}, expected {VERSION}")
        _check_manifest(directory, manifest)
        for role, entry in files.items():
            listed = {entry["name"]: entry}
            if role == "state":
                listed = {os.path.join(entry["name"], f): e for f, e in entry["files"].items()}
            for name, file_entry in listed.items():
                file = os.path.join(directory, name)
                if not os.path.isfile(file):
                    raise CLIError(f"checkpoint {directory} is incomplete: {name} ({role}) is missing")
                if os.path.getsize(file) != file_entry["bytes"] or _sha256(file) != file_entry["sha256"]:
                    raise CLIError(f"checkpoint {directory} is corrupt: {name} ({role}) fails its checksum")
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
        return ("optimizer" in self._files or self.sharded) and "rng" in self._files

    @property
    def sharded(self) -> bool:
        """Written by a run on several processes: the model and optimizer are in a state directory."""
        return "state" in self._files

    def load_model(self, model: TTTE2EModel) -> None:
        """The weights into a model that is not sharded (one process; before a distributed run wraps it)."""
        if self.sharded:
            self._load_state({"model": model.state_dict()}, "the model weights")
            return
        from safetensors.torch import load_file

        try:
            state = load_file(self._files["model"])
            model.load_state_dict(state, strict=True)
        except Exception as e:  # safetensors raises its own error types
            raise CLIError(f"checkpoint {self.directory}: cannot load the model weights: {e}") from None

    def load_training_state(self, model: TTTE2EModel, optimizer) -> None:
        """The optimizer state into ``optimizer`` of ``model`` (plain, under DDP, or sharded by fully_shard), and
        from a sharded checkpoint the weights too (those of a single process's files are loaded with load_model,
        before a wrapper shards the model), whichever number of processes wrote the checkpoint and whichever reads
        it (a collective call on every rank of a distributed run)."""
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_state_dict,
            set_optimizer_state_dict,
            set_state_dict,
        )

        if self.sharded:
            model_state, optimizer_state = get_state_dict(model, optimizer)
            self._load_state({"model": model_state, "optimizer": optimizer_state}, "the training state")
            set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
            return
        saved = torch.load(self._files["optimizer"], map_location="cpu", weights_only=True)
        if not dist.is_initialized():
            optimizer.load_state_dict(saved)
            return
        # A single process's file, read whole by every rank: the optimizer state is indexed by parameter position,
        # which set_state_dict wants as parameter names.
        names = {id(p): n for n, p in model.named_parameters()}
        order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        by_name = {
            "state": {order[i]: moments for i, moments in saved["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]],
        }
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))

    def _load_state(self, state: dict, what: str) -> None:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        try:
            with warnings.catch_warnings():  # one process reading a sharded checkpoint is what is meant
                warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
                dcp.load(state, checkpoint_id=self._files["state"], no_dist=not dist.is_initialized())
        except Exception as e:  # the shards do not match the model (another config), a missing key
            raise CLIError(f"checkpoint {self.directory}: cannot load {what}: {e}") from None

    def load_rng(self) -> dict:
        return torch.load(self._files["rng"], map_location="cpu", weights_only=True)
