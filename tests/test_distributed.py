"""Meta-training on several processes (ttt_kernels.distributed, ``ttt-kernels train`` under torchrun): DDP and FSDP2
on CPU (gloo) against one process, sharded checkpoints across world sizes, a rank that dies.

The multi-process tests start real process groups with torchrun (``python -m torch.distributed.run --standalone``)
or, for the dead-rank test, two processes with the launcher's variables set by hand.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from ttt_kernels import distributed
from ttt_kernels.cli import CLIError, checkpoint, data, main
from ttt_kernels.cli import train as train_module
from ttt_kernels.cli.train import METRICS_FILE
from ttt_kernels.model import TTTE2EModel

TESTS = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(TESTS, "distributed_worker.py")

# 2 blocks (one of them a suffix block) of width 32, window 32, mini-batch 16: a step takes milliseconds.
MODEL = [
    *("--set", "num_layers=2", "--set", "hidden_size=32", "--set", "mlp_size=64"),
    *("--set", "window=32", "--set", "mini_batch_size=16"),
]
RUN = [*MODEL, "--context", "64", "--batch", "4", "--steps", "4", "--val-every", "2", "--val-windows", "3"]
RUN += ["--no-progress", "--save-minutes", "0"]


def _torchrun(nproc: int, argv: list, timeout: float = 300, ok: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *argv]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert (done.returncode == 0) == ok, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def _train(nproc: int, out, corpus: str, *extra) -> None:
    argv = ["train", "--out", str(out), "--corpus", corpus, *RUN, *extra]
    if nproc == 1:
        assert main([*argv, "--threads", "1"]) == 0
    else:
        _torchrun(nproc, ["-m", "ttt_kernels", *argv])


def _resume(nproc: int, directory, *extra) -> None:
    if nproc == 1:
        assert main(["train", "--resume", str(directory), "--no-progress", "--threads", "1", *extra]) == 0
    else:
        _torchrun(nproc, ["-m", "ttt_kernels", "train", "--resume", str(directory), "--no-progress", *extra])


def _weights(directory) -> dict:
    ckpt = checkpoint.Checkpoint(str(directory))
    model = TTTE2EModel(ckpt.config)
    ckpt.load_model(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _losses(directory) -> list:
    with open(os.path.join(directory, METRICS_FILE)) as f:
        lines = [json.loads(line) for line in f]
    return [(m["step"], m.get("loss", m.get("val_loss"))) for m in lines]


def _assert_same_run(a, b, rtol: float) -> None:
    """Losses (train and validation) agree to ``rtol``; the final weights per tensor to ``rtol`` of its norm and
    elementwise to ``rtol`` plus 1e-6 absolute. Why 1e-6: Adam moves every entry by about lr (3e-4) per step whatever
    its gradient's size, so an entry whose gradient is mostly rounding (the sums of two ranks against one batch)
    moves differently by a part of that; on an Intel Xeon (MKL's AVX-512 GEMMs) one such entry of 0.0186 differed by
    4.0e-7 after 4 steps, while its tensor agreed to 4.4e-7 of its norm."""
    la, lb = _losses(a), _losses(b)
    assert [s for s, _ in la] == [s for s, _ in lb]
    for (step, x), (_, y) in zip(la, lb):
        assert abs(x - y) <= rtol * abs(x), (step, x, y)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=rtol, atol=1e-6, msg=name)
        assert (wa[name] - wb[name]).norm() <= rtol * wa[name].norm(), name
    torch.manual_seed(0)  # the initialization every run starts from (seed 0)
    initial = TTTE2EModel(checkpoint.Checkpoint(str(a)).config).state_dict()
    assert all((wa[k] - initial[k]).norm() > 1e-4 * wa[k].norm() for k in wa), "a tensor did not train"


# ---------------------------------------------------------------------------------------------------------------------
# Pieces


def test_world_from_env():
    assert distributed.world_from_env({}) is None
    assert distributed.world_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert distributed.world_from_env(env) == distributed.World(3, 4, 1, 2)
    assert distributed.world_from_env({"WORLD_SIZE": "2", "RANK": "1"}) == distributed.World(1, 2, 0, 2)
    for env, message in (
        ({"WORLD_SIZE": "2"}, "RANK is not set"),
        ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK must be an integer, got 'x'"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "inconsistent launcher variables"),
    ):
        with pytest.raises(ValueError, match=message):
            distributed.world_from_env(env)


def test_share_pads_with_zero_weights():
    items = torch.arange(5) * 10
    whole, weights = distributed.share(items, None)
    assert torch.equal(whole, items) and torch.equal(weights, torch.ones(5, dtype=torch.float64))
    parts = [distributed.share(items, distributed.World(r, 3, r, 3)) for r in range(3)]
    assert [p.tolist() for p, _ in parts] == [[0, 10], [20, 30], [40, 40]]
    assert [w.tolist() for _, w in parts] == [[1, 1], [1, 1], [1, 0]]
    rows, weights = distributed.share(items[:1], distributed.World(1, 2, 1, 2))
    assert rows.tolist() == [0] and weights.tolist() == [0]


def test_ranks_read_the_global_batch(corpus_file):
    corpus = data.load_corpus(corpus_file)
    whole = data.WindowSampler(corpus.train, 64, 4, seed=3)
    parts = [data.WindowSampler(corpus.train, 64, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        assert torch.equal(whole.next_batch(), torch.cat([p.next_batch() for p in parts]))
    with pytest.raises(CLIError, match=r"--batch \(4, the global batch\) must be a multiple of the number of proc"):
        data.WindowSampler(corpus.train, 64, 4, seed=3, rank=0, world_size=3)


@pytest.mark.parametrize("command", [["eval", "CKPT"], ["generate", "CKPT"], ["demo"]])
def test_only_train_runs_on_several_processes(command, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"{command[0]} runs in one process (WORLD_SIZE=2): start it without torchrun" in err


def test_a_signal_while_metrics_are_written_reaches_the_stop_flag():
    """On several processes an interrupt must not stop one rank where it is: a signal caught while rank 0 writes its
    metrics goes to the handler in place before (the stop flag), not to a KeyboardInterrupt of rank 0 alone."""
    stop = train_module._StopRequests()
    try:
        with train_module._interrupts_deferred():
            signal.raise_signal(signal.SIGTERM)
            assert not stop.requested  # deferred to the end of the block
        assert stop.requested
    finally:
        stop.restore()
    with pytest.raises(KeyboardInterrupt):  # one process: Python's SIGINT handler, as before
        with train_module._interrupts_deferred():
            signal.raise_signal(signal.SIGINT)


# ---------------------------------------------------------------------------------------------------------------------
# float64: the wrappers against one process, second order, with and without recomputation


@pytest.fixture(scope="module")
def single_process_steps(tmp_path_factory):
    """The worker's results on one process, per checkpoint mode."""
    directory, results = tmp_path_factory.mktemp("single"), {}
    for mode in ("auto", "true"):
        out = str(directory / f"{mode}.pt")
        subprocess.run([sys.executable, WORKER, out, mode], check=True, timeout=120)
        results[mode] = torch.load(out)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "true"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_float64_steps_equal_one_process(tmp_path, single_process_steps, strategy, mode):
    out = str(tmp_path / "two.pt")
    _torchrun(2, [WORKER, out, mode, "--strategy", strategy])
    one, two = single_process_steps[mode], torch.load(out)
    assert one["losses"] == pytest.approx(two["losses"], rel=1e-12, abs=0)
    assert one["state"].keys() == two["state"].keys()
    for name, value in one["state"].items():
        torch.testing.assert_close(two["state"][name], value, rtol=1e-10, atol=1e-12, msg=name)


# ---------------------------------------------------------------------------------------------------------------------
# The command line: 1 process, 2 DDP ranks, 2 FSDP2 ranks; resumes across world sizes


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, corpus_file):
    out = tmp_path_factory.mktemp("runs") / "one"
    _train(1, out, corpus_file)
    return out


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def two_rank_run(request, tmp_path_factory, corpus_file):
    out = tmp_path_factory.mktemp("runs") / request.param
    _train(2, out, corpus_file, "--strategy", request.param)
    return request.param, out


@pytest.mark.slow
def test_two_ranks_follow_one_process(two_rank_run, corpus_file, one_process_run, capsys):
    strategy, out = two_rank_run
    _assert_same_run(one_process_run, out, 1e-5)
    ckpt = checkpoint.Checkpoint(str(out))
    assert ckpt.sharded and ckpt.resumable and "model" not in ckpt.manifest["files"]
    assert ckpt.trainer["processes"] == 2 and ckpt.trainer["strategy"] == strategy
    assert len(glob.glob(str(out / "state-*" / "__*_0.distcp"))) == 2
    # one process reads the sharded checkpoint
    assert main(["eval", str(out), "--corpus", corpus_file, "--windows", "2", "--threads", "1"]) == 0
    assert main(["generate", str(out), "--prompt", "def g", "--max-new-tokens", "8", "--threads", "1"]) == 0
    capsys.readouterr()


@pytest.mark.slow
@pytest.mark.parametrize(
    "first, then", [(("fsdp", 2), ("", 1)), (("fsdp", 2), ("ddp", 2)), (("", 1), ("fsdp", 2)), (("ddp", 2), ("", 1))]
)
def test_resume_across_world_sizes(tmp_path, corpus_file, one_process_run, first, then):
    """Half the steps on one world size, the rest on another: the one-process trajectory."""
    (strategy, nproc), (then_strategy, then_nproc) = first, then
    out = tmp_path / "run"
    _train(nproc, out, corpus_file, "--stop-after", "2", *(("--strategy", strategy) if strategy else ()))
    assert checkpoint.Checkpoint(str(out)).step == 2
    _resume(then_nproc, out, *(("--strategy", then_strategy) if then_strategy else ()))
    ckpt = checkpoint.Checkpoint(str(out))
    assert ckpt.step == 4 and ckpt.sharded == (then_nproc > 1)
    # the earlier step's files are gone, whichever form they had
    assert sorted(os.listdir(out)) == sorted(
        {e["name"] for e in ckpt.manifest["files"].values()} | {"manifest.json", METRICS_FILE, "tensorboard"}
    )
    _assert_same_run(one_process_run, out, 1e-5)


def _edit_manifest(directory, edit) -> None:
    path = os.path.join(directory, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    edit(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)


def _flip_first_shard(directory) -> None:
    (shard, *_) = sorted(glob.glob(os.path.join(directory, "state-*", "__*_0.distcp")))
    with open(shard, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, message",
    [
        (_flip_first_shard, r"is corrupt: state-\d+-[0-9a-f]{8}/__0_0.distcp \(state\) fails its checksum"),
        (lambda d: os.remove(glob.glob(os.path.join(d, "state-*", ".metadata"))[0]), "is incomplete: state-"),
        (lambda d: _edit_manifest(d, lambda m: m["files"]["state"].update(name="..")), "must be a file name inside"),
        (
            lambda d: _edit_manifest(d, lambda m: m["files"]["state"].update(name="weights")),
            "'state' must name a state-N-XXXXXXXX directory",
        ),
        (
            lambda d: _edit_manifest(d, lambda m: m["files"]["state"]["files"].update({"../x": {}})),
            "'state/../x' must be a file name inside the state directory",
        ),
        (lambda d: _edit_manifest(d, lambda m: m["files"].pop("state")), "manifest.json is corrupt"),
    ],
)
def test_damaged_sharded_checkpoints_are_refused(two_rank_run, tmp_path, damage, message):
    copy = str(tmp_path / "copy")
    shutil.copytree(two_rank_run[1], copy)
    damage(copy)
    with pytest.raises(CLIError, match=message):
        checkpoint.Checkpoint(copy)


# ---------------------------------------------------------------------------------------------------------------------
# Failures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_setting_error_stops_every_rank_before_training(tmp_path, corpus_file):
    out = tmp_path / "run"
    argv = ["-m", "ttt_kernels", "train", "--out", str(out), "--corpus", corpus_file, *RUN, "--batch", "3"]
    done = _torchrun(2, argv, ok=False)
    message = "ttt-kernels: error: --batch (3, the global batch) must be a multiple of the number of processes (2)"
    assert done.stderr.count(message) == 2, done.stderr[-3000:]
    assert not out.exists()  # created for the lock by rank 0, removed again


@pytest.mark.slow
def test_a_dead_rank_stops_the_others(tmp_path, corpus_file):
    """Rank 1 is killed mid-training (no launcher to clean up): rank 0 exits with a clear error, not a hang."""
    out = tmp_path / "run"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    env.update(LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "ttt_kernels", "train", "--out", str(out), "--corpus", corpus_file, *MODEL]
    argv += ["--steps", "100000", "--batch", "2", "--context", "64", "--no-progress", "--dist-timeout", "60"]
    ranks = [
        subprocess.Popen(argv, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stderr=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(out / METRICS_FILE) or not open(out / METRICS_FILE).read():
            assert time.monotonic() < deadline and ranks[0].poll() is None, "training never started"
            time.sleep(0.1)
        ranks[1].kill()
        start = time.monotonic()
        _, err = ranks[0].communicate(timeout=90)
        assert time.monotonic() - start < 60, "rank 0 waited for the dead rank until the timeout"
        assert ranks[0].returncode == 2, err[-3000:]
        assert "rank 0 of 2: a collective operation failed, probably because another rank stopped" in err, err
        assert "Traceback" not in err
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
                p.communicate()


@pytest.mark.slow
def test_sigterm_saves_on_every_rank(tmp_path, corpus_file):
    """torchrun forwards SIGTERM to every rank; they finish the step, save it together and exit."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "ttt_kernels"]
    argv += ["train", "--out", str(out), "--corpus", corpus_file, *RUN, "--steps", "100000", "--strategy", "fsdp"]
    launcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(out / METRICS_FILE) or len(open(out / METRICS_FILE).readlines()) < 2:
            assert time.monotonic() < deadline and launcher.poll() is None, "training never started"
            time.sleep(0.1)
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert "interrupted at step" in err, err[-3000:]
    ckpt = checkpoint.Checkpoint(str(out))
    assert ckpt.sharded and ckpt.step >= 1
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
