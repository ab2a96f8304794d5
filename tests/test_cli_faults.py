"""Fault injection on the command line's checkpoints: kill -9 at random points of a run that saves after every
step, Ctrl-C and SIGTERM. Whatever the moment, the output directory holds a complete, verified checkpoint (or, killed
before the first save completed, nothing of a checkpoint), and the next run resumes it and leaves no temporaries.
Disk full and concurrent writers are tested in tests/test_cli.py (test_disk_full_during_a_save,
test_second_writer_is_refused)."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from ttt_kernels.cli import checkpoint
from ttt_kernels.cli.train import LOCK_FILE, METRICS_FILE, TENSORBOARD_DIR

MODEL = ["--set", "num_layers=2", "--set", "hidden_size=32", "--set", "num_heads=2", "--set", "mlp_size=64"]
ARGS = [*MODEL, "--context", "64", "--batch", "2", "--val-every", "0", "--no-progress", "--log-every", "1"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("".join(f"def f{i}(x):\n    return x * {i % 13} + {i}\n" for i in range(1500)))
    return str(path)


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def _foreground_signals():
    """In the child: SIGINT as in a terminal's foreground job (a shell starts background jobs with SIGINT ignored,
    and Python then raises no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(argv):
    return subprocess.Popen(
        [sys.executable, "-m", "ttt_kernels", "train", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=_foreground_signals,
    )


def _finish(proc, timeout: float):
    """(stdout, stderr) of the child once it exits; killed (and the test failed) if it does not within timeout."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def _wait_for_steps(proc, steps: int) -> None:
    """Reads the run's log until it has printed `steps` step lines."""
    seen = 0
    for line in proc.stdout:
        if line.startswith("step"):
            seen += 1
            if seen >= steps:
                return
    raise AssertionError(f"the run ended before {steps} steps: {proc.stderr.read()[-2000:]}")


def _assert_consistent(out) -> int | None:
    """The directory holds a verified checkpoint (returns its step), or no manifest and only files of ours."""
    if checkpoint.is_checkpoint(str(out)):
        return checkpoint.Checkpoint(str(out)).step
    names = os.listdir(out) if os.path.isdir(out) else []
    assert all(
        n in (LOCK_FILE, METRICS_FILE, TENSORBOARD_DIR, "config.json") or n.startswith(".tmp-") for n in names
    ), names
    return None


@pytest.mark.slow
def test_kill_9_at_random_points_keeps_a_loadable_checkpoint(tmp_path, corpus_file):
    out = tmp_path / "run"
    rng = random.Random(0)
    last = None
    for kill in range(6):
        if last is None:
            argv = ["--out", str(out), "--corpus", corpus_file, *ARGS, "--steps", "100000"]
        else:
            argv = ["--resume", str(out), "--no-progress", "--log-every", "1"]
        proc = _start([*argv, "--save-minutes", "1e-9"])  # a save after every step
        _wait_for_steps(proc, 2)  # the second step's line comes after the first step's save
        time.sleep(rng.uniform(0.0, 0.5))  # somewhere inside a step or its save
        proc.send_signal(signal.SIGKILL)
        _finish(proc, 60)
        step = _assert_consistent(out)
        assert step is not None and (last is None or step >= last), (kill, step, last)
        last = step
    r = subprocess.run(
        [sys.executable, "-m", "ttt_kernels", "train", "--resume", str(out), "--stop-after", "1", "--no-progress"],
        capture_output=True, text=True, env=_env(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert checkpoint.Checkpoint(str(out)).step == last + 1
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")], os.listdir(out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupts_save_the_step_reached(tmp_path, corpus_file, sig):
    out = tmp_path / "run"
    proc = _start(["--out", str(out), "--corpus", corpus_file, *ARGS, "--steps", "100000"])
    _wait_for_steps(proc, 2)
    proc.send_signal(sig)
    _, err = _finish(proc, 120)
    assert proc.returncode == 2 and "interrupted at step" in err and "Traceback" not in err, err
    assert checkpoint.Checkpoint(str(out)).step >= 2
    assert not (out / LOCK_FILE).exists()
