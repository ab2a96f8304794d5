"""PNG plot of loss by token position (matplotlib, Agg backend: no display needed)."""

import os
import tempfile

from .errors import CLIError


def plot_loss_by_position(runs: list, path: str, *, window: int | None, title: str) -> None:
    """One line per run (per-chunk mean loss at the chunk's centre position), a dashed line at the window.
    Written atomically (temporary file in the same directory, then os.replace)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CLIError(f"--plot: directory {directory} does not exist")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for run in runs:
        ax.plot(run.positions(), run.chunk_losses, marker="o", markersize=3, label=run.name)
    if window is not None:
        ax.axvline(window, color="grey", linestyle="--", linewidth=1, label=f"attention window ({window})")
    ax.set_xlabel("token position in the context")
    ax.set_ylabel("loss (nats per byte)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=directory)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
