"""Meta-training (or baseline training) of a TTT-E2E model on a byte corpus, with checkpoints and exact resume.

Outer optimiser: AdamW (no weight decay on norm weights), learning rate with a linear warm-up from lr/warmup to lr
over ``warmup`` steps then a cosine decay to ``lr * min_lr_ratio`` at the last step, and a global gradient-norm
clip. The inner learning rate eta warms up linearly from ``inner_lr_start`` (0.1) to ``inner_lr`` (1) over
``inner_warmup`` steps, as in the paper. Each step draws ``batch`` random windows of ``context`` + 1 tokens from the
train split with a generator seeded by ``seed``. On several processes (torchrun; ttt_kernels.distributed) ``batch`` is
the global batch, each rank reads its share, and the trajectory is the single process's, to rounding.
"""

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import signal
import tempfile
import threading
import time

import torch

from ttt_kernels import distributed
from ttt_kernels.model import TTTE2EConfig, TTTE2EModel
from ttt_kernels.profiling import phase

from . import checkpoint, data, runtime
from .errors import CLIError
from .progress import progress_bar

# Training settings: everything that determines the loss trajectory (saved in the checkpoint; a resumed run must
# not change them). None in TRAIN_DEFAULTS means "derived" (see resolve_settings).
TRAIN_DEFAULTS = {
    "preset": "tiny",
    "config": None,
    "set": [],
    "baseline": "ttt",
    "corpus": None,
    "corpus_suffix": None,
    "steps": 200,
    "batch": 4,
    "context": 1024,
    "lr": 3e-3,
    "min_lr_ratio": 0.1,
    "warmup": None,
    "weight_decay": 0.1,
    "beta1": 0.9,
    "beta2": 0.95,
    "grad_clip": 1.0,
    "inner_lr": 1.0,
    "inner_lr_start": 0.1,
    "inner_warmup": None,
    "seed": 0,
    "checkpointing": "auto",
    "val_every": 50,
    "val_windows": 16,
}
BASELINES = ("ttt", "swa", "full")
# meta_loss's activation checkpointing (docs/model.md): none is fastest, chunk/group4 keep less memory per token, auto
# recomputes only the chunks whose graphs exceed a memory budget.
CHECKPOINTING = {
    "auto": dict(checkpoint="auto"),
    "none": dict(checkpoint=False),
    "chunk": dict(checkpoint=True),
    "group4": dict(checkpoint=True, checkpoint_group=4, checkpoint_prefix=True),
}


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` with value parsed as JSON when possible (``window=128``, ``ttt=false``), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CLIError(f"--set: expected KEY=VALUE (e.g. window=128), got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def resolve_config(
    preset: str | None, config_path: str | None, overrides: list, baseline: str, context: int
) -> TTTE2EConfig:
    """The model config: a preset or a JSON file (a full config, or {"preset": name, field: value, ...}), then the
    ``--set`` overrides, then the baseline (swa: TTT off; full: TTT off and window >= context)."""
    fields = {}
    if config_path is not None:
        try:
            with open(config_path) as f:
                fields = json.load(f)
        except OSError as e:
            raise CLIError(f"--config: cannot read {config_path}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise CLIError(f"--config: {config_path} is not valid JSON: {e}") from None
        if not isinstance(fields, dict):
            raise CLIError(f"--config: {config_path} must hold a JSON object of TTTE2EConfig fields")
        preset = fields.pop("preset", None)
    fields.update(parse_override(o) for o in overrides)
    if baseline not in BASELINES:
        raise CLIError(f"--baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    if baseline != "ttt":
        fields["ttt"] = False
    try:
        if preset is not None:
            config = TTTE2EConfig.preset(preset, **fields)
        else:
            config = TTTE2EConfig.from_dict(fields)
    except (ValueError, TypeError) as e:
        arg = "--preset" if preset is not None and "unknown preset" in str(e) else "--config/--set"
        raise CLIError(f"{arg}: {e}") from None
    if config.vocab_size < data.VOCAB_SIZE:
        raise CLIError(
            f"--config/--set: vocab_size must be >= {data.VOCAB_SIZE} (the byte tokens), got {config.vocab_size}"
        )
    if baseline == "full" and config.window < context:
        config = dataclasses.replace(config, window=context)
    return config


def check_context(config: TTTE2EConfig, context: int, of: str = "") -> None:
    """The context must hold whole mini-batches (``of``: whose mini-batch, for the message)."""
    b = config.mini_batch_size
    if context < 1 or context % b:
        raise CLIError(
            f"--context ({context}) must be a positive multiple of the mini-batch size{of} (mini_batch_size = {b}): "
            "one inner step per mini-batch"
        )


def resolve_settings(given: dict) -> dict:
    """Defaults filled in; warm-ups default to 10% (outer) and 25% (inner) of the steps."""
    s = {k: (given.get(k) if given.get(k) is not None else v) for k, v in TRAIN_DEFAULTS.items()}
    for name in ("steps", "batch", "context", "val_windows"):
        if not isinstance(s[name], int) or s[name] < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be an integer >= 1, got {s[name]!r}")
    if s["warmup"] is None:
        s["warmup"] = max(1, s["steps"] // 10)
    if s["inner_warmup"] is None:
        s["inner_warmup"] = max(1, s["steps"] // 4)
    for name in ("lr", "grad_clip", "inner_lr", "inner_lr_start"):
        if not (isinstance(s[name], (int, float)) and math.isfinite(s[name]) and s[name] > 0):
            raise CLIError(f"--{name.replace('_', '-')} must be a finite number > 0, got {s[name]!r}")
    # Closed or half-open intervals each number must lie in (finite): (low, low inclusive, high, high inclusive).
    ranges = {
        "min_lr_ratio": (0.0, True, 1.0, True),
        "weight_decay": (0.0, True, math.inf, False),
        "beta1": (0.0, True, 1.0, False),
        "beta2": (0.0, True, 1.0, False),
    }
    for name, (low, low_in, high, high_in) in ranges.items():
        v = s[name]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v >= low if low_in else v > low) and (v <= high if high_in else v < high)
        if not ok:
            interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
            raise CLIError(f"--{name.replace('_', '-')} must be a finite number in {interval}, got {v!r}")
    if isinstance(s["seed"], bool) or not isinstance(s["seed"], int) or not 0 <= s["seed"] < 2**63:
        raise CLIError(f"--seed must be an integer in [0, 2^63), got {s['seed']!r}")
    if s["checkpointing"] not in CHECKPOINTING:
        raise CLIError(f"--checkpointing must be one of {', '.join(CHECKPOINTING)}, got {s['checkpointing']!r}")
    if s["val_every"] < 0 or s["warmup"] < 0 or s["inner_warmup"] < 0:
        raise CLIError("--val-every, --warmup and --inner-warmup must be >= 0")
    return s


def _check_writable(out: str) -> None:
    """Writes and removes a probe file in ``out`` (created by _lock_out) and imports what saving needs, so that a run
    cannot end without its checkpoint after training (an unwritable --out, a missing safetensors)."""
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise CLIError("saving checkpoints needs the safetensors package: pip install safetensors") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-", dir=out)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise CLIError(f"--out: cannot write to {out}: {e.strerror or e}") from None


LOCK_FILE = ".ttt-kernels.lock"
METRICS_FILE = "metrics.jsonl"  # one JSON object per step (and per validation), beside the checkpoint
TENSORBOARD_DIR = "tensorboard"  # event files, when the tensorboard package is installed
_RUN_FILES = {LOCK_FILE, METRICS_FILE, TENSORBOARD_DIR}  # what a run writes besides checkpoints


class _Metrics:
    """Per-step metrics of a run: ``DIR/metrics.jsonl`` (a line per step and per validation, flushed as written)
    and, when the tensorboard package is installed, TensorBoard event files in ``DIR/tensorboard``.

    A resumed run first drops the lines of steps after its checkpoint (a killed run may have logged steps it never
    saved), so the file always describes the trajectory the checkpoint continues; a new run starts a new file."""

    def __init__(self, out: str, resumed_step: int | None):
        path = os.path.join(out, METRICS_FILE)
        kept = []
        if resumed_step is not None and os.path.exists(path):
            with open(path, errors="replace") as f:
                for line in f:
                    try:
                        if json.loads(line)["step"] <= resumed_step:
                            kept.append(line if line.endswith("\n") else line + "\n")
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut by a kill
        checkpoint._atomic_write(out, METRICS_FILE, checkpoint._write_text("".join(kept)))
        self.file = open(path, "a")
        self.board = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.board = SummaryWriter(os.path.join(out, TENSORBOARD_DIR), purge_step=resumed_step)

    def log(self, step: int, **values) -> None:
        # TensorBoard's writer hands events to its thread through a queue: a Ctrl-C inside a put would leave the
        # queue waiting for an event that never comes, and close() would hang. Interrupts wait until the line is out.
        with _interrupts_deferred():
            self.file.write(json.dumps({"step": step, **values}) + "\n")
            self.file.flush()
            if self.board is not None:
                for name, value in values.items():
                    self.board.add_scalar(name, value, step)

    def close(self) -> None:
        with _interrupts_deferred():
            self.file.close()
            if self.board is not None:
                self.board.close()


def _handle_interrupts(handler) -> dict:
    """Installs ``handler`` for SIGINT and SIGTERM; returns the previous handlers (nothing changed, {} outside the
    main thread, where Python delivers no signals)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextlib.contextmanager
def _interrupts_deferred():
    """SIGINT and SIGTERM arriving inside the block reach the handlers in place before it when it ends (Python's
    KeyboardInterrupt, training's SIGTERM interrupt, or the stop flag of a run on several processes); a signal
    whose previous disposition is not a Python handler (default, ignored) raises KeyboardInterrupt."""
    caught = []
    previous = _handle_interrupts(lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        _restore_handlers(previous)
    for signum in caught:
        handler = previous[signum]
        if not callable(handler):
            raise KeyboardInterrupt
        handler(signum, None)


def _lock_out(out: str):
    """Creates ``out`` and holds an exclusive lock on its LOCK_FILE for the run: a second run writing the same
    directory (a fresh run or a --resume) is refused instead of deleting the first one's files. The lock goes with
    the process (flock), so a killed run leaves none behind. Returns (the open lock file, whether ``out`` was
    created)."""
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
        lock = open(os.path.join(out, LOCK_FILE), "a+")
    except OSError as e:
        raise CLIError(f"--out: cannot write to {out}: {e.strerror or e}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise CLIError(
            f"--out: {out} is being written by another ttt-kernels run (pid {holder}); wait for it or "
            "choose another directory"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock, created


def _unlock_out(held) -> None:
    """Removes the lock file while still holding it (no other run can be using it), releases the lock, and removes
    ``out`` again if this run created it and wrote nothing (it failed before its first save)."""
    lock, created = held
    directory = os.path.dirname(lock.name)
    try:
        os.remove(lock.name)
        if created and not os.listdir(directory):
            os.rmdir(directory)
    except OSError:
        pass
    lock.close()


class _StopRequests:
    """On several processes SIGINT and SIGTERM (torchrun forwards them to every rank; a scheduler may signal only
    one) set a flag instead of interrupting: the ranks agree on it at the end of each step and all save that step
    together (an interrupt in the middle of a collective would leave the other ranks waiting in it)."""

    def __init__(self):
        self.requested = False
        self.previous = _handle_interrupts(self._request)

    def _request(self, signum, frame) -> None:
        self.requested = True

    def reduce(self, loss: torch.Tensor, clocks: tuple) -> tuple[float, bool, list]:
        """One all-reduce at the end of a step: (the mean of the ranks' losses, whether any rank was asked to stop,
        rank 0's ``clocks``: time decisions are taken on one clock)."""
        import torch.distributed as dist

        world, main = dist.get_world_size(), dist.get_rank() == 0
        values = [loss.double() / world, torch.tensor(float(self.requested), dtype=torch.float64)]
        values += [torch.tensor(c if main else 0.0, dtype=torch.float64) for c in clocks]
        values = torch.stack([v.to(loss.device) for v in values])
        dist.all_reduce(values)
        loss_mean, stopping, *rank0_clocks = values.tolist()
        return loss_mean, stopping > 0, rank0_clocks

    def restore(self) -> None:
        _restore_handlers(self.previous)


def _sigterm_raises_interrupt():
    """SIGTERM (a scheduler's kill) interrupts training like Ctrl-C, so that a checkpoint is saved. Returns the
    previous handler, to restore after training; None (nothing changed) outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def learning_rate(s: dict, step: int) -> float:
    """Outer learning rate of step ``step`` (0-based): linear warm-up, then cosine to lr * min_lr_ratio."""
    lr, warmup, total = s["lr"], s["warmup"], s["steps"]
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup - 1)
    floor = lr * s["min_lr_ratio"]
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def inner_learning_rate(s: dict, step: int) -> float:
    """eta of step ``step``: linear from inner_lr_start to inner_lr over inner_warmup steps."""
    if step >= s["inner_warmup"]:
        return s["inner_lr"]
    return s["inner_lr_start"] + (s["inner_lr"] - s["inner_lr_start"]) * step / s["inner_warmup"]


def make_optimizer(model: TTTE2EModel, s: dict) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": s["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s["lr"], betas=(s["beta1"], s["beta2"]), foreach=False)


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module, windows: torch.Tensor, inner_lr: float, batch: int, world: distributed.World | None = None
) -> float:
    """The mean meta-loss of ``windows``, ``batch`` at a time (each batch shared among the ranks of ``world``).
    ``model``: what a training step calls (a TTTE2EModel, or its DDP / fully_shard wrapping)."""
    total = torch.zeros((), dtype=torch.float64, device=windows.device)
    for i in range(0, len(windows), batch):
        rows, weights = distributed.share(windows[i : i + batch], world)
        _, per_chunk = model(rows, inner_lr)
        total += (per_chunk.mean(1).double() * weights.to(total.device)).sum()
    if world is not None:
        import torch.distributed as dist

        dist.all_reduce(total)
        distributed.reshard(model)
    return total.item() / len(windows)


@dataclasses.dataclass
class TrainResult:
    model: TTTE2EModel
    settings: dict
    step: int
    history: list
    validation: list
    train_seconds: float
    tokens_per_second: float
    stopped_early: str | None


def _rng_state(sampler: data.WindowSampler, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "sampler": sampler.state_dict()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _print_header(
    model: TTTE2EModel,
    s: dict,
    corpus: data.Corpus,
    device: torch.device,
    step: int,
    world: distributed.World | None = None,
    strategy: str = "ddp",
) -> None:
    """What the run is: model size, data, device and threads (and processes), where it starts."""
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    kind = {"ttt": "TTT-E2E", "swa": "sliding-window baseline", "full": "full-attention baseline"}[s["baseline"]]
    where = f"cpu, {torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    if world is not None:
        where = f"{world.size} processes ({strategy}), each on {where}"
    start = f"resuming at step {step}" if step else "from scratch"
    print(
        f"train: {kind}, preset {s['preset'] or 'custom'}, {params / 1e6:.2f}M parameters (L{c.num_layers} "
        f"d{c.hidden_size} window {c.window} mini-batch {c.mini_batch_size}); corpus {corpus.describe()}; "
        f"{s['batch']} x {s['context']} "
        f"tokens per step, {s['steps']} steps, {start}; {where}; checkpointing {s['checkpointing']}",
        flush=True,
    )


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Progress:
    """A tqdm bar on a terminal (loss, tokens/s, ETA); otherwise a log line every ``every`` steps."""

    def __init__(self, total: int, initial: int, enabled: bool | None, every: int):
        self.every, self.initial, self.start = every, initial, time.perf_counter()
        self.bar = progress_bar(total, "train", "step", enabled, initial)

    def update(self, step: int, total: int, loss: float, tok_s: float, lr: float, eta: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:.0f}", lr=f"{lr:.2e}", inner_lr=f"{eta:.2f}")
            self.bar.update(1)
        elif self.every and (step % self.every == 0 or step == total):
            per_step = (time.perf_counter() - self.start) / max(1, step - self.initial)
            left = _duration(per_step * (total - step))
            print(
                f"step {step}/{total}  loss {loss:.4f}  {tok_s:.0f} tok/s  lr {lr:.2e}  inner-lr {eta:.2f}  ETA {left}",
                flush=True,
            )

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(
    given: dict,
    *,
    out: str | None,
    device: torch.device,
    resume: str | None = None,
    corpus: data.Corpus | None = None,
    save_every: int = 0,
    save_seconds: float = 600.0,
    stop_after: int | None = None,
    seconds: float | None = None,
    progress: bool | None = None,
    log_every: int = 10,
    overwrite: bool = False,
    origin: str = "train",
    reserve_steps: float = 0.0,
    header: bool = True,
    world: distributed.World | None = None,
    strategy: str = "ddp",
) -> TrainResult:
    """Trains (or resumes) and writes checkpoints to ``out`` (``resume``'s directory when None). ``stop_after``:
    stop after that many steps of this run; ``seconds``: stop when the next step would exceed this time budget.
    Either way a checkpoint is saved, and ``--resume`` continues the run exactly. Checkpoints are also saved every
    ``save_every`` steps and, so that a killed run loses little, after any step that ends ``save_seconds`` (0:
    never) after the last save or the start. ``overwrite``: ``out`` may hold
    a checkpoint already (replaced when the first save's manifest is written). ``origin``: which command wrote
    the checkpoint (recorded in trainer-N.json). ``reserve_steps``: with ``seconds``, also keep the time of that
    many average steps free (for work after training whose cost scales like a step). ``header``: print a line
    saying what is trained, on what, where (the demo prints its own). ``world``: this process's rank among those
    torchrun started (their process group initialized on ``device``), None for one process; ``strategy``: how the
    model is distributed, "ddp" or "fsdp" (ttt_kernels.distributed). Rank 0 alone prints, logs metrics and holds
    the directory lock; every rank writes its shards of each checkpoint."""
    ckpt = None
    if resume is not None:
        ckpt = checkpoint.Checkpoint(resume)
        if not ckpt.resumable:
            raise CLIError(f"--resume: checkpoint {resume} has no optimizer/RNG state (not a training checkpoint)")
        saved = ckpt.trainer["settings"]
        changed = [k for k, v in given.items() if k in saved and v is not None and v != saved[k]]
        if changed:
            diffs = ", ".join(f"--{k.replace('_', '-')} {given[k]!r} (checkpoint: {saved[k]!r})" for k in changed)
            raise CLIError(f"--resume: training settings differ from the checkpoint's: {diffs}")
        s = resolve_settings(saved)
        out = resume if out is None else out
    else:
        s = resolve_settings(given)
    if out is None:
        raise CLIError("--out: a checkpoint directory is required")
    replaces_other = resume is None or os.path.abspath(out) != os.path.abspath(resume)
    if replaces_other and not overwrite and checkpoint.is_checkpoint(out):
        raise CLIError(f"--out: {out} already holds a checkpoint (continue it with --resume {out}, or choose another)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--out: {out} exists and is not a directory")
    if os.path.isdir(out) and set(os.listdir(out)) - _RUN_FILES and not checkpoint.is_checkpoint(out):
        # Saving writes config.json and removes earlier steps' files by name: never in a directory of someone else's.
        raise CLIError(
            f"--out: {out} is a non-empty directory that is not a ttt-kernels checkpoint; choose a new or "
            "empty directory"
        )

    main = world is None or world.is_main
    lock, error = None, None
    try:
        try:
            if main:
                lock = _lock_out(out)  # one writer per checkpoint directory
                _check_writable(out)
            if ckpt is not None:  # the checkpoint's own config.json (a --config file may have moved since)
                config = ckpt.config
            else:
                config = resolve_config(s["preset"], s["config"], s["set"], s["baseline"], s["context"])
            check_context(config, s["context"])
            per_rank = s["batch"] // (world.size if world else 1)
            runtime.check_memory(
                config, device, tokens=per_rank * s["context"], training=True, what="the training configuration"
            )
            if corpus is None:
                corpus = data.load_corpus(s["corpus"], s["corpus_suffix"])
            data.require_length(corpus, s["context"])
            sampler = data.WindowSampler(
                corpus.train, s["context"], s["batch"], s["seed"], *((world.rank, world.size) if world else ())
            )
        except CLIError as e:
            if world is None:
                raise
            error = str(e)
        if world is not None:
            checkpoint.agree(error)  # every rank stops here if any rank's settings, data or directory are wrong

        torch.manual_seed(s["seed"])
        model = TTTE2EModel(config).to(device)
        if ckpt is not None and not ckpt.sharded:
            ckpt.load_model(model)  # a single process's weights, before a wrapper shards or broadcasts them
        step_module = model if world is None else distributed.wrap(model, strategy, device)
        optimizer = make_optimizer(model, s)
        val_windows = data.evaluation_windows(corpus.validation, s["context"], s["val_windows"]).to(device)
        step, history, validation = 0, [], []
        if ckpt is not None:
            ckpt.load_training_state(model, optimizer)
            rng = ckpt.load_rng()
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], device)
            sampler.load_state_dict(rng["sampler"])
            step, history, validation = ckpt.step, ckpt.trainer["history"], ckpt.trainer["validation"]

        def save():
            trainer = {
                "step": step,
                "origin": origin,
                "settings": s,
                "history": history,
                "validation": validation,
                "corpus": corpus.source,
                "processes": world.size if world else 1,
            }
            if world is not None:
                trainer["strategy"] = strategy
                checkpoint.save_sharded(
                    out, model, optimizer, step=step, trainer=trainer, rng=_rng_state(sampler, device)
                )
                return
            checkpoint.save(
                out, model, step=step, trainer=trainer, optimizer=optimizer, rng=_rng_state(sampler, device)
            )

        total, tokens_per_step = s["steps"], s["batch"] * s["context"]
        if header and main:
            _print_header(model, s, corpus, device, step, world, strategy)
        metrics = _Metrics(out, step if ckpt is not None else None) if main else None
        bar = _Progress(total, step, progress if main else False, log_every if main else 0)
        stop = _StopRequests() if world is not None else None
        previous_sigterm = _sigterm_raises_interrupt() if world is None else None
        last_save = time.perf_counter()
        start, saved_step, stopped, run_steps = time.perf_counter(), step if ckpt is not None else None, None, 0
        agreed_elapsed = 0.0
        try:
            while step < total:
                if stop_after is not None and run_steps >= stop_after:
                    stopped = f"--stop-after {stop_after}"
                    break
                # on several processes rank 0's clock at the end of the last step, so that all ranks stop together
                elapsed = time.perf_counter() - start if world is None else agreed_elapsed
                if seconds is not None and run_steps and elapsed + (1 + reserve_steps) * elapsed / run_steps > seconds:
                    stopped = f"time budget of {seconds:.0f} s"
                    break
                lr, eta = learning_rate(s, step), inner_learning_rate(s, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                t0 = time.perf_counter()
                tokens = sampler.next_batch().to(device)
                loss, _ = step_module(tokens, eta, **CHECKPOINTING[s["checkpointing"]])
                with phase("ttt.outer_backward"):
                    loss.backward()
                grad_norm = distributed.local_value(
                    torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
                ).item()  # over every rank's gradients (reduced by the wrapper): the same on every rank
                if world is None:
                    loss_value = loss.item()
                else:  # the global batch's loss (the mean of the ranks' equal shares), whether a rank was stopped
                    loss_value, stopping, (agreed_since_save, agreed_elapsed) = stop.reduce(
                        loss.detach(), (time.perf_counter() - last_save, time.perf_counter() - start)
                    )
                if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):  # before the weights take the step
                    kept = f"; the last checkpoint (step {saved_step}) is kept" if saved_step is not None else ""
                    raise CLIError(
                        f"training diverged at step {step + 1} (loss {loss_value}, gradient norm {grad_norm}); try a "
                        f"lower --lr{kept}"
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step, run_steps = step + 1, run_steps + 1
                dt = time.perf_counter() - t0
                history.append({"step": step, "loss": loss_value, "lr": lr, "inner_lr": eta, "grad_norm": grad_norm})
                bar.update(step, total, loss_value, tokens_per_step / dt, lr, eta)
                if main:
                    metrics.log(
                        step,
                        loss=loss_value,
                        lr=lr,
                        inner_lr=eta,
                        grad_norm=grad_norm,
                        tokens_per_s=tokens_per_step / dt,
                        step_s=dt,
                        elapsed_s=elapsed + dt,
                    )
                if s["val_every"] and (step % s["val_every"] == 0 or step == total):
                    val = validation_loss(step_module, val_windows, s["inner_lr"], s["batch"], world)
                    validation.append({"step": step, "loss": val})
                    if main:
                        metrics.log(step, val_loss=val)
                        bar.write(f"step {step}: validation loss {val:.4f} ({len(val_windows)} held-out windows)")
                since_save = time.perf_counter() - last_save if world is None else agreed_since_save
                if (save_every and step % save_every == 0) or (save_seconds and since_save >= save_seconds):
                    save()
                    saved_step, last_save = step, time.perf_counter()
                if world is not None and stopping:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (on several processes: at the end of the step on every rank)
            if step != saved_step:
                save()
            raise CLIError(
                f"interrupted at step {step}; checkpoint {out} saved, continue with --resume {out}"
            ) from None
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
            if previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)
            if stop is not None:
                stop.restore()
        train_seconds = time.perf_counter() - start
        if saved_step != step:
            save()
        return TrainResult(
            model=model,
            settings=s,
            step=step,
            history=history,
            validation=validation,
            train_seconds=train_seconds,
            tokens_per_second=run_steps * tokens_per_step / train_seconds if train_seconds > 0 else 0.0,
            stopped_early=stopped,
        )
    finally:
        if lock is not None:
            _unlock_out(lock)
