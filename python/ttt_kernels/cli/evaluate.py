"""Loss by token position on held-out text: per mini-batch chunk, then grouped into position buckets.

A run is one model evaluated with one setting (a checkpoint with test-time training on, or the same weights with
it off). Every run reads the same evaluation windows (evenly spaced in the validation split, no seed), so their
losses are directly comparable. Losses are in nats per byte (divide by ln 2 for bits per byte).
"""

import dataclasses
import math
import time

import torch

from ttt_kernels.model import TTTE2EModel


@dataclasses.dataclass
class Run:
    """Per-chunk mean losses over the evaluation windows of one model/setting."""

    name: str
    chunk_size: int
    window: int
    chunk_losses: list  # mean loss of chunk i (positions i*b .. (i+1)*b - 1) over the windows
    tokens_per_second: float

    def positions(self) -> list:
        """Centre position of every chunk (for plotting)."""
        b = self.chunk_size
        return [i * b + (b - 1) / 2 for i in range(len(self.chunk_losses))]

    def mean(self, lo: int, hi: int) -> float:
        """Mean loss of the tokens at positions [lo, hi) (chunk-aligned; chunks hold equally many tokens)."""
        b = self.chunk_size
        chunks = self.chunk_losses[lo // b : hi // b]
        return sum(chunks) / len(chunks)


@torch.no_grad()
def evaluate(model: TTTE2EModel, windows: torch.Tensor, *, name: str, inner_lr: float, batch: int) -> Run:
    """Runs meta_loss (no outer gradient; the inner steps still happen when the config has TTT on) over the windows
    [N, T+1], ``batch`` at a time, and returns the per-chunk losses averaged over windows."""
    model.eval()
    total, count = None, 0
    start = time.perf_counter()
    for i in range(0, len(windows), batch):
        _, per_chunk = model.meta_loss(windows[i : i + batch], inner_lr)
        s = per_chunk.double().sum(0)
        total = s if total is None else total + s
        count += per_chunk.shape[0]
    seconds = time.perf_counter() - start
    losses = (total / count).tolist()
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    c = model.config
    return Run(name, c.mini_batch_size, c.window, losses, tokens / seconds if seconds > 0 else 0.0)


def buckets(context: int, unit: int, window: int | None) -> list[tuple[int, int]]:
    """Position buckets [lo, hi): the first ``unit`` positions, then doubling widths, with an edge at the window
    (rounded up to ``unit``) so that no bucket straddles it."""
    edges = {0, context}
    e = unit
    while e < context:
        edges.add(e)
        e *= 2
    if window is not None and window < context:
        edges.add(min(context, -(-window // unit) * unit))
    edges = sorted(edges)
    return list(zip(edges[:-1], edges[1:]))


def bucket_unit(runs: list) -> int:
    unit = 1
    for r in runs:
        unit = unit * r.chunk_size // math.gcd(unit, r.chunk_size)
    return unit


def table(runs: list, context: int, window: int | None) -> tuple[str, list]:
    """The loss-by-position table (text) and its rows ([lo, hi, beyond_window, [loss per run]])."""
    unit = bucket_unit(runs)
    rows = []
    for lo, hi in buckets(context, unit, window):
        rows.append([lo, hi, window is not None and lo >= window, [r.mean(lo, hi) for r in runs]])
    rows.append([0, context, False, [r.mean(0, context) for r in runs]])
    if window is not None and window < context:
        lo = -(-window // unit) * unit
        rows.append([lo, context, True, [r.mean(lo, context) for r in runs]])
    width = max(12, *(len(r.name) for r in runs))
    head = f"{'positions':<16}" + "".join(f"{r.name:>{width + 2}}" for r in runs)
    if len(runs) == 2:
        head += f"{'difference':>{width + 2}}"
    lines = [head, "-" * len(head)]
    n_buckets = len(rows) - (2 if window is not None and window < context else 1)
    for i, (lo, hi, beyond, losses) in enumerate(rows):
        if i == n_buckets:
            lines.append("-" * len(head))
        if i < n_buckets:
            label = f"{lo}-{hi - 1}" + (" *" if beyond else "")
        elif i == n_buckets:
            label = "all"
        else:
            label = f"beyond ({lo}-{hi - 1})"
        line = f"{label:<16}" + "".join(f"{x:>{width + 2}.4f}" for x in losses)
        if len(runs) == 2:
            line += f"{losses[0] - losses[1]:>+{width + 2}.4f}"
        lines.append(line)
    note = "loss in nats per byte, mean over the evaluation windows"
    if window is not None and window < context:
        note += f"; * = positions >= the attention window ({window}): their keys no longer reach the start"
    if len(runs) == 2:
        note += f"; difference = {runs[0].name} - {runs[1].name} (negative: {runs[0].name} is better)"
    lines.append(note)
    return "\n".join(lines), rows
