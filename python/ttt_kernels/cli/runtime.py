"""Device and thread selection, the description of a GPU, and the memory estimate checked before a model is
allocated."""

import os
import shutil
import subprocess

import torch

from ttt_kernels.model import TTTE2EConfig, TTTE2EModel

from .errors import CLIError

GIB = 1 << 30


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def setup(device: str | None, threads: int | None, world=None) -> torch.device:
    """torch threads (default: the cores this process may run on, shared among the node's processes of ``world``,
    a ttt_kernels.distributed.World) and the device (default: cuda if available; "cuda" is the local rank's GPU)."""
    if threads is not None and threads < 1:
        raise CLIError(f"--threads must be >= 1, got {threads}")
    local = world.local_size if world is not None else 1
    torch.set_num_threads(threads or max(1, available_cores() // local))
    name = device or default_device()
    if world is not None and name == "cuda":
        name = f"cuda:{world.local_rank}"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CLIError(f"--device: unknown device {name!r} (expected cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: no CUDA device is visible (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device: unsupported device {name!r} (expected cpu, cuda or cuda:N)")
    if dev.type == "cuda" and world is not None:
        torch.cuda.set_device(dev)
    return dev


# nvidia-smi's fields in gpu_description: the driver, SM and memory clocks now and at most (MHz), the power limit (W).
_SMI_FIELDS = ("driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "power.limit")


def gpu_description(device: torch.device) -> dict:
    """The GPU a result was measured on: name, compute capability, memory, SMs, CUDA version, and nvidia-smi's
    _SMI_FIELDS when it is installed (recorded by the bench scripts and ttt-kernels gpucheck)."""
    props = torch.cuda.get_device_properties(device)
    info = {
        "gpu": props.name,
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "gpu_sms": props.multi_processor_count,
        "cuda": torch.version.cuda,
    }
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return info
    index = device.index if device.index is not None else torch.cuda.current_device()
    query = [smi, f"--query-gpu={','.join(_SMI_FIELDS)}", "--format=csv,noheader,nounits", f"--id={index}"]
    try:
        values = [
            v.strip() for v in subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.split(",")
        ]
    except (OSError, subprocess.SubprocessError):
        return info
    if len(values) == len(_SMI_FIELDS):
        info.update(zip(_SMI_FIELDS, values))
    return info


def parameter_count(config: TTTE2EConfig) -> int:
    """Exact number of parameters, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = TTTE2EModel(config)
    return sum(p.numel() for p in model.parameters())


def available_memory(device: torch.device) -> int:
    """Free bytes: the GPU's free memory, or MemAvailable of /proc/meminfo (physical pages otherwise)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def activation_bytes_per_token(config: TTTE2EConfig, training: bool) -> int:
    """A deliberately generous estimate of the activation memory per token (float32).

    Training keeps, per block, a few dozen d-sized and a few m-sized tensors per token (measured for the tiny preset
    with per-chunk checkpointing: ~45 KiB per token, this formula gives ~75 KiB), plus logits and their gradient.
    Inference without a graph keeps a few of them at a time.
    """
    c = config
    per_block = 24 * c.hidden_size + 6 * c.mlp_size
    floats = c.num_layers * per_block + 4 * c.vocab_size
    if not training:
        floats = 4 * per_block + 2 * c.vocab_size
    return 4 * floats


def check_memory(config: TTTE2EConfig, device: torch.device, *, tokens: int, training: bool, what: str) -> None:
    """Raises CLIError when parameters (+ gradients and AdamW moments when training) and activations for
    ``tokens`` tokens at once would not fit in 90% of the device's free memory."""
    params = parameter_count(config)
    weights = 4 * params * (4 if training else 1)
    acts = activation_bytes_per_token(config, training) * tokens
    need, free = weights + acts, available_memory(device)
    if need > 0.9 * free:
        kind = "weights, gradients and AdamW state" if training else "weights"
        raise CLIError(
            f"{what} does not fit in memory: about {need / GIB:.1f} GiB needed ({params / 1e6:.1f}M parameters: "
            f"{weights / GIB:.1f} GiB of {kind}; activations for {tokens} tokens: {acts / GIB:.1f} GiB), "
            f"{free / GIB:.1f} GiB available on {device}; use a smaller preset, --batch or --context"
        )
