"""Loss by token position on held-out text: per mini-batch chunk, then grouped into position buckets.

A run is one model evaluated with one setting (a checkpoint with test-time training on, or the same weights with
it off). Every run reads the same evaluation windows (evenly spaced in the validation split, no seed), so their
losses are directly comparable. Losses are in nats per byte (divide by ln 2 for bits per byte).
"""

import dataclasses
import math
import time

import torch
import torch.nn.functional as F

from ttt_kernels.model.model import PREFILL_SLICE_TOKENS, TokenSource

from .progress import progress_bar


@dataclasses.dataclass
class Run:
    """Per-chunk mean losses over the evaluation windows of one model/setting."""

    name: str
    chunk_size: int
    window: int
    chunk_losses: list  # mean loss of chunk i (positions i*b .. (i+1)*b - 1) over the windows
    tokens_per_second: float
    windows: int  # evaluation windows read (fewer than given when a deadline stopped the evaluation)

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
def evaluate(
    models: list,
    windows: torch.Tensor,
    *,
    inner_lr: float,
    batch: int,
    deadline: float | None = None,
    progress: bool | None = None,
) -> list[Run]:
    """Runs every ``(name, model)`` in ``models`` over the windows [N, T+1] (chunk_losses: the inner steps happen when
    the config has TTT on), ``batch`` windows at a time (each batch through every model in turn), and returns one Run
    per model: the per-chunk losses averaged over the windows.

    ``deadline`` (a time.perf_counter() value): stop before a batch that would end after it, judged by the slowest
    batch so far; every model then has read the same windows (at least one batch). ``progress``: a bar over the
    windows (default: on a terminal).
    """
    totals, seconds = [None] * len(models), [0.0] * len(models)
    count, slowest = 0, 0.0
    bar = progress_bar(len(windows), "eval", "window", progress) or _NoBar()
    for i in range(0, len(windows), batch):
        if deadline is not None and count and time.perf_counter() + slowest > deadline:
            bar.write(f"evaluation stopped at {count} of {len(windows)} windows (time budget)")
            break
        batch_start = time.perf_counter()
        for k, (_, model) in enumerate(models):
            t0 = time.perf_counter()
            per_chunk = chunk_losses(model.eval(), windows[i : i + batch], inner_lr)
            s = per_chunk.double().sum(0)
            totals[k] = s if totals[k] is None else totals[k] + s
            seconds[k] += time.perf_counter() - t0
        count += min(batch, len(windows) - i)
        slowest = max(slowest, time.perf_counter() - batch_start)
        bar.update(min(batch, len(windows) - i))
    bar.close()
    tokens = count * (windows.shape[1] - 1)
    return [
        Run(name, m.config.mini_batch_size, m.config.window, (total / count).tolist(), tokens / t if t else 0.0, count)
        for (name, m), total, t in zip(models, totals, seconds)
    ]


@torch.no_grad()
def chunk_losses(
    model, tokens, inner_lr: float, slice_tokens: int = PREFILL_SLICE_TOKENS, progress=None
) -> torch.Tensor:
    """The per-chunk mean losses [B, T/b] of ``tokens`` [B, T+1] (inputs tokens[:, :-1], targets tokens[:, 1:]), or
    [1, T/b] of one sequence of T+1 tokens given as a 1-D source (TokenSource: a memmap of a document): what
    ``model.meta_loss(tokens)`` returns without an outer gradient, read with ``model.prefill`` a slice at a time, in
    memory bounded by the slice (never the whole sequence's activations or logits). ``progress``: called with the
    number of tokens of each slice read."""
    device = model.embed.weight.device
    source = TokenSource(tokens, device)
    n = source.length - 1
    b, bos = model.config.mini_batch_size, model.config.bos_token_id
    state, sums, counts = None, None, None
    for lo in range(0, n, slice_tokens):
        piece = source.read(lo, min(lo + slice_tokens, n) + 1)  # inputs and the target after each
        state, logits = model.prefill(piece[:, :-1], state, inner_lr=inner_lr, return_logits=True)
        targets = piece[:, 1:]
        # logits: float32, float64 for a float64 model (the dtype of meta_loss's losses)
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
        valid = torch.ones_like(ce) if bos is None else (targets != bos).to(ce.dtype)
        if sums is None:
            sums = ce.new_zeros(ce.shape[0], -(-n // b))
            counts = torch.zeros_like(sums)
        chunk = torch.arange(lo, lo + ce.shape[1], device=device) // b
        sums.index_add_(1, chunk, ce * valid)
        counts.index_add_(1, chunk, valid)
        if progress is not None:
            progress(ce.shape[1])
    return sums / counts.clamp(min=1)


def evaluate_document(models: list, document, context: int, *, inner_lr: float, progress: bool | None = None):
    """Every ``(name, model)`` over the first ``context`` + 1 tokens of one long ``document`` (a 1-D source: a
    memmap of a file), read a slice at a time (chunk_losses): loss by position over one long context, in memory that
    does not grow with it. Returns one Run per model."""
    runs = []
    for name, model in models:
        bar = progress_bar(context, name, "tok", progress) or _NoBar()
        start = time.perf_counter()
        per_chunk = chunk_losses(model.eval(), document[: context + 1], inner_lr, progress=bar.update)
        seconds = time.perf_counter() - start
        bar.close()
        b, window = model.config.mini_batch_size, model.config.window
        runs.append(Run(name, b, window, per_chunk[0].double().tolist(), context / seconds, 1))
    return runs


class _NoBar:
    """The bar's place when there is none: messages still get printed."""

    def update(self, n):
        pass

    def write(self, text):
        print(text, flush=True)

    def close(self):
        pass


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
    return bucket_unit_of([r.chunk_size for r in runs])


def bucket_unit_of(chunk_sizes: list) -> int:
    """The least common multiple of the chunk sizes: buckets aligned to every run's chunks."""
    unit = 1
    for b in chunk_sizes:
        unit = unit * b // math.gcd(unit, b)
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
