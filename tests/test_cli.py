"""The ttt-kernels command line: train / resume / eval / generate / demo / bench on tiny configs, checkpoints, errors.

Commands run in-process through ``ttt_kernels.cli.main(argv)``; one test runs ``python -m ttt_kernels`` (and the
``ttt-kernels`` script when it is on PATH) as a subprocess.
"""

import glob
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch

import ttt_kernels
from ttt_kernels.cli import GLIBC_MALLOC, CLIError, _glibc, checkpoint, data, evaluate, main, tuned_environment
from ttt_kernels.cli.train import METRICS_FILE, TENSORBOARD_DIR
from ttt_kernels.model import TTTE2EModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 2 blocks of width 32, window 32, mini-batch 16: a training step takes milliseconds.
MODEL = [
    *("--set", "num_layers=2", "--set", "hidden_size=32", "--set", "mlp_size=64"),
    *("--set", "window=32", "--set", "mini_batch_size=16"),
]
SMALL = [*MODEL, "--context", "64", "--batch", "2", "--val-every", "3", "--val-windows", "2", "--no-progress"]


def _train(out, corpus, *extra):
    return main(["train", "--out", str(out), "--corpus", corpus, *SMALL, *extra])


def _history(directory) -> list:
    (path,) = glob.glob(os.path.join(directory, "trainer-*.json"))
    with open(path) as f:
        return json.load(f)["history"]


def _metrics(directory) -> list:
    with open(os.path.join(directory, METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


def _check_png(path) -> None:
    """PNG signature, then every chunk's CRC, ending with IEND; the IHDR has a non-empty size."""
    with open(path, "rb") as f:
        blob = f.read()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds = 8, []
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        kind, body = blob[pos + 4 : pos + 8], blob[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", blob[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        kinds.append(kind)
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    width, height = struct.unpack(">II", blob[16:24])
    assert width > 100 and height > 100


def _no_partial(directory) -> None:
    """Either nothing at all, or no temporaries and no files beyond what a valid manifest lists."""
    if not os.path.exists(directory):
        return
    names = set(os.listdir(directory))
    assert not any(n.startswith(".tmp-") for n in names), names
    if checkpoint.MANIFEST in names:
        ckpt = checkpoint.Checkpoint(str(directory))
        listed = {e["name"] for e in ckpt.manifest["files"].values()} | {checkpoint.MANIFEST}
        assert names <= listed | {"loss_by_position.png", METRICS_FILE, TENSORBOARD_DIR}, names - listed
    else:
        assert not names, names


# ---------------------------------------------------------------------------------------------------------------------
# Corpus and sampler


def test_corpus_split_is_deterministic_and_by_file(tmp_path):
    for i in range(40):
        (tmp_path / f"m{i}.py").write_text(f"x = {i}\n" * 20)
    (tmp_path / "notes.txt").write_text("not python")
    a, b = data.load_corpus(str(tmp_path), ".py"), data.load_corpus(str(tmp_path), ".py")
    assert torch.equal(a.train, b.train) and torch.equal(a.validation, b.validation)
    assert a.train_files + a.validation_files == 40 and a.validation_files >= 1
    val_names = [f"m{i}.py" for i in range(40) if data.is_validation(f"m{i}.py")]
    assert len(val_names) == a.validation_files
    assert b"not python" not in bytes(a.train.tolist())


def test_single_file_is_split_by_position(corpus_file):
    c = data.load_corpus(corpus_file)
    raw = open(corpus_file, "rb").read()
    assert bytes(c.train.tolist()) + bytes(c.validation.tolist()) == raw
    assert len(c.validation) == len(raw) // data.VALIDATION_MODULUS


def test_default_corpus_is_the_standard_library():
    c = data.load_corpus()
    assert c.train_files > 100 and c.validation_files > 10
    assert 0.03 < len(c.validation) / (len(c.train) + len(c.validation)) < 0.3
    assert data.decode(data.encode("héllo")) == "héllo"


def test_sampler_is_deterministic_and_restorable(corpus_file):
    tokens = data.load_corpus(corpus_file).train
    a, b = data.WindowSampler(tokens, 64, 3, seed=5), data.WindowSampler(tokens, 64, 3, seed=5)
    first = a.next_batch()
    assert torch.equal(first, b.next_batch()) and first.shape == (3, 65) and first.dtype == torch.int64
    state = a.state_dict()
    expected = a.next_batch()
    c = data.WindowSampler(tokens, 64, 3, seed=99)
    c.load_state_dict(state)
    assert torch.equal(c.next_batch(), expected)
    assert not torch.equal(data.WindowSampler(tokens, 64, 3, seed=6).next_batch(), first)


# ---------------------------------------------------------------------------------------------------------------------
# Commands


def test_train_eval_generate(tmp_path, corpus_file, capsys):
    out = tmp_path / "run"
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        assert _train(out, corpus_file, "--steps", "4") == 0
    names = {event.name for event in prof.events()}
    assert {"ttt.outer_backward", "ttt.chunk 0", "ttt.inner_step"} <= names  # the step's phases (docs/profiling.md)
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("train: TTT-E2E, preset tiny") and "M parameters" in header and "from scratch" in header
    ckpt = checkpoint.Checkpoint(str(out))
    assert ckpt.step == 4 and ckpt.resumable
    assert ckpt.config.hidden_size == 32 and ckpt.config.ttt
    assert [h["step"] for h in _history(out)] == [1, 2, 3, 4]
    assert {"config.json", "manifest.json"} <= set(os.listdir(out))
    model = TTTE2EModel(ckpt.config)
    ckpt.load_model(model)

    plot, report = tmp_path / "loss.png", tmp_path / "eval.json"
    capsys.readouterr()
    rc = main(["eval", str(out), "--ttt-off", "--windows", "3", "--plot", str(plot), "--json", str(report)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "run (TTT on)" in text and "run (TTT off)" in text and "beyond (32-63)" in text
    _check_png(plot)
    result = json.load(open(report))
    assert result["context"] == 64 and len(result["runs"]) == 2 and len(result["runs"][0]["chunk_losses"]) == 4
    # chunk 0 is predicted with W_0 either way: TTT on and off agree there
    assert result["runs"][0]["chunk_losses"][0] == pytest.approx(result["runs"][1]["chunk_losses"][0], abs=1e-6)

    outputs = []
    for _ in range(2):
        assert main(["generate", str(out), "--prompt", "def f", "--max-new-tokens", "20", "--seed", "3"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("def f")
    assert main(["generate", str(out), "--prompt", "def f", "--max-new-tokens", "5", "--no-ttt"]) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "def f" * 20, "--max-new-tokens", "7", "--progress"]) == 0
    err = capsys.readouterr().err  # tqdm's bars: the prompt's 100 tokens, then the 7 sampled ones
    assert re.search(r"prefill: 100%.*100/100", err) and re.search(r"decode: 100%.*7/7", err), err


@pytest.mark.parametrize("threads", [1, 2])
def test_resume_is_bit_identical(tmp_path, corpus_file, threads):
    full, split = tmp_path / "full", tmp_path / "split"
    common = ["--steps", "6", "--threads", str(threads)]
    assert _train(full, corpus_file, *common) == 0
    assert _train(split, corpus_file, *common, "--stop-after", "2") == 0
    assert checkpoint.Checkpoint(str(split)).step == 2
    with open(split / METRICS_FILE, "a") as f:  # as if a killed run had logged steps after its last save
        f.write('{"step": 3, "loss": 123.0}\n{"step": 4, "lo')
    assert main(["train", "--resume", str(split), "--stop-after", "2", "--no-progress", "--threads", str(threads)]) == 0
    assert main(["train", "--resume", str(split), "--no-progress", "--threads", str(threads)]) == 0
    a, b = _history(full), _history(split)
    assert [h["loss"] for h in a] == [h["loss"] for h in b]  # exact float equality, every step
    assert a == b
    fa, fb = checkpoint.Checkpoint(str(full)), checkpoint.Checkpoint(str(split))
    assert fa.manifest["files"]["model"]["sha256"] == fb.manifest["files"]["model"]["sha256"]
    assert fa.trainer["validation"] == fb.trainer["validation"]
    # metrics.jsonl: one line per step (and one per validation), the unsaved steps of a killed run dropped on resume
    ma, mb = _metrics(full), _metrics(split)
    assert [m["step"] for m in mb if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert [(m["step"], m.get("loss"), m.get("val_loss")) for m in ma] == [
        (m["step"], m.get("loss"), m.get("val_loss")) for m in mb
    ]
    assert {"loss", "lr", "inner_lr", "grad_norm", "tokens_per_s", "step_s", "elapsed_s"} <= set(mb[0])


def test_tensorboard_scalars(tmp_path, corpus_file):
    """With tensorboard installed (requirements/test.txt), the per-step metrics also go to DIR/tensorboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert _train(out, corpus_file, "--steps", "3") == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("loss")]
    want = [(m["step"], m["loss"]) for m in _metrics(out) if "loss" in m]
    assert [step for step, _ in losses] == [1, 2, 3]
    assert losses == [(step, pytest.approx(loss, rel=1e-6)) for step, loss in want]
    assert {"grad_norm", "tokens_per_s", "val_loss"} <= set(events.Tags()["scalars"])


def test_resume_into_another_directory(tmp_path, corpus_file, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    cfg = tmp_path / "model.json"
    cfg.write_text(json.dumps({"preset": "tiny", "num_layers": 2, "hidden_size": 32, "mlp_size": 64, "window": 32,
                               "mini_batch_size": 16}))  # fmt: skip
    args = ["--corpus", corpus_file, "--config", str(cfg), "--context", "64", "--batch", "2", "--no-progress"]
    assert main(["train", "--out", str(first), *args, "--steps", "4", "--stop-after", "2"]) == 0
    os.remove(cfg)  # resuming needs only the checkpoint
    assert main(["train", "--resume", str(first), "--out", str(second), "--no-progress"]) == 0
    assert checkpoint.Checkpoint(str(first)).step == 2 and checkpoint.Checkpoint(str(second)).step == 4
    assert len(_history(second)) == 4 and _history(second)[:2] == _history(first)
    _fails(["train", "--resume", str(first), "--out", str(second)], capsys, "already holds a checkpoint")


def test_save_every_keeps_one_complete_checkpoint(tmp_path, corpus_file):
    out = tmp_path / "run"
    assert _train(out, corpus_file, "--steps", "5", "--save-every", "2") == 0
    assert checkpoint.Checkpoint(str(out)).step == 5
    _no_partial(out)
    assert len(glob.glob(str(out / "model-*.safetensors"))) == 1


def test_baselines(tmp_path, corpus_file):
    assert _train(tmp_path / "swa", corpus_file, "--steps", "2", "--baseline", "swa") == 0
    assert _train(tmp_path / "full", corpus_file, "--steps", "2", "--baseline", "full") == 0
    swa, full = checkpoint.Checkpoint(str(tmp_path / "swa")), checkpoint.Checkpoint(str(tmp_path / "full"))
    assert not swa.config.ttt and swa.config.window == 32
    assert not full.config.ttt and full.config.window >= 64
    paths = [str(tmp_path / n) for n in ("swa", "full")]
    assert main(["eval", *paths, "--windows", "2", "--plot", str(tmp_path / "b.png")]) == 0
    _check_png(tmp_path / "b.png")


def test_config_json(tmp_path, corpus_file):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"preset": "tiny", "num_layers": 2, "hidden_size": 32, "mlp_size": 64, "window": 32,
                               "mini_batch_size": 16}))  # fmt: skip
    args = ["train", "--out", str(tmp_path / "r"), "--corpus", corpus_file, "--config", str(cfg)]
    assert main([*args, "--context", "32", "--batch", "1", "--steps", "1", "--no-progress"]) == 0
    assert checkpoint.Checkpoint(str(tmp_path / "r")).config.num_layers == 2


def test_demo_small(tmp_path, corpus_file, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--minutes", "0.25", "--out", str(out), "--corpus", corpus_file, "--context", "64", *MODEL]
    assert main([*args, "--windows", "4", "--batch", "2", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "TTT on" in text and "TTT off" in text and "beyond the window (positions 32-63)" in text
    assert "tokens/s" in text
    _check_png(out / "loss_by_position.png")
    assert checkpoint.Checkpoint(str(out)).step >= 1
    # a second demo replaces the first one's checkpoint
    assert main([*args, "--windows", "2", "--batch", "2", "--no-progress"]) == 0
    _no_partial(out)


def test_demo_keeps_its_time_budget(tmp_path, corpus_file, capsys, monkeypatch):
    """Training, evaluation and the sample all fit in --minutes (here 15 s) on a machine far slower than calibrated
    (each evaluation batch made to take 1 s more): the evaluation stops at the budget with the windows read so far."""
    chunk_losses = evaluate.chunk_losses

    def slow_evaluation(*args, **kwargs):
        time.sleep(1.0)
        return chunk_losses(*args, **kwargs)

    monkeypatch.setattr(evaluate, "chunk_losses", slow_evaluation)
    out = tmp_path / "demo"
    start = time.perf_counter()
    args = ["demo", "--minutes", "0.25", "--out", str(out), "--corpus", corpus_file, "--context", "64", *MODEL]
    assert main([*args, "--windows", "400", "--batch", "2", "--no-progress"]) == 0  # more windows than time allows
    elapsed = time.perf_counter() - start
    text = capsys.readouterr().out
    assert elapsed < 15 + 3, text  # the budget, plus the table and the plot after it
    assert "evaluation stopped at" in text


def test_evaluation_deadline_reads_the_same_windows_for_every_setting(trained, corpus_file):
    ckpt = checkpoint.Checkpoint(str(trained))
    model = TTTE2EModel(ckpt.config)
    ckpt.load_model(model)
    windows = data.evaluation_windows(data.load_corpus(corpus_file, None).validation, 64, 6)
    full = evaluate.evaluate([("a", model), ("b", model)], windows, inner_lr=1.0, batch=2, progress=False)
    assert [r.windows for r in full] == [6, 6] and full[0].chunk_losses == full[1].chunk_losses
    cut = evaluate.evaluate([("a", model)], windows, inner_lr=1.0, batch=2, deadline=0.0, progress=False)
    assert cut[0].windows == 2  # at least one batch, then the passed deadline stops it
    assert cut[0].chunk_losses != full[0].chunk_losses


def test_chunk_losses_are_meta_losses(trained, corpus_file):
    """The evaluation's per-chunk losses, read with prefill a slice at a time (slices that are not multiples of b
    too), are meta_loss's, for a batch of windows and for one window given as a memmap."""
    ckpt = checkpoint.Checkpoint(str(trained))
    model = TTTE2EModel(ckpt.config).double()
    ckpt.load_model(model)
    windows = data.evaluation_windows(data.load_corpus(corpus_file, None).validation, 64, 3)
    with torch.no_grad():
        want = model.meta_loss(windows)[1]
    for slice_tokens in (4096, 24):
        got = evaluate.chunk_losses(model, windows, 1.0, slice_tokens=slice_tokens)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    path = os.path.join(os.path.dirname(corpus_file), "window.bin")
    windows[1].numpy().astype(np.uint8).tofile(path)
    got = evaluate.chunk_losses(model, np.memmap(path, dtype=np.uint8, mode="r"), 1.0, slice_tokens=24)
    torch.testing.assert_close(got, want[1:2], rtol=1e-12, atol=1e-12)


def test_eval_document_and_generate_from_a_prompt_file(trained, corpus_file, tmp_path, capsys):
    """eval --document reads one long context from a file (mapped, a slice at a time); generate --prompt-file prints
    the continuation only."""
    report = tmp_path / "doc.json"
    assert main(["eval", str(trained), "--document", corpus_file, "--json", str(report), "--ttt-off"]) == 0
    text = capsys.readouterr().out
    result = json.load(open(report))
    size = os.path.getsize(corpus_file)
    assert result["context"] == (size - 1) // 16 * 16 and f"the first {result['context']} tokens of" in text
    assert len(result["runs"]) == 2 and len(result["runs"][0]["chunk_losses"]) == result["context"] // 16
    assert main(["eval", str(trained), "--document", corpus_file, "--context", "96", "--json", str(report)]) == 0
    assert len(json.load(open(report))["runs"][0]["chunk_losses"]) == 6
    capsys.readouterr()
    _fails(["eval", str(trained), "--document", corpus_file, "--context", str(size)], capsys, "--document", "bytes")
    _fails(["eval", str(trained), "--document", str(tmp_path / "none.txt")], capsys, "--document: cannot read")
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(b"def f" * 2000)
    assert main(["generate", str(trained), "--prompt-file", str(prompt), "--max-new-tokens", "9", "--seed", "1"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out) == 9 + 1 and "[10000 prompt + 9 new bytes" in captured.err
    prompt.write_bytes(b"")
    _fails(["generate", str(trained), "--prompt-file", str(prompt)], capsys, "--prompt-file: the prompt is empty")


def test_demo_does_not_replace_a_training_checkpoint(trained, corpus_file, capsys):
    before = checkpoint.Checkpoint(str(trained)).manifest
    _fails(["demo", "--out", str(trained), "--corpus", corpus_file, *MODEL], capsys, "--out", "demo did not write")
    assert checkpoint.Checkpoint(str(trained)).manifest == before


def test_info_and_selfcheck(capsys):
    assert main(["info"]) == 0
    assert "ttt_kernels" in capsys.readouterr().out
    assert main(["selfcheck"]) == 0


def test_gpucheck_without_a_gpu_says_what_it_skipped(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine: the no-GPU path
    out = tmp_path / "report"
    assert main(["gpucheck", "--out", str(out), "--bench-dir", os.path.join(REPO, "bench")]) == 0
    text = capsys.readouterr().out
    assert "gpucheck: nothing checked: no CUDA device is visible" in text
    report = json.loads((out / "gpucheck.json").read_text())
    assert report["status"] == "nothing checked: no CUDA device is visible" and not report["phases"]
    skipped = "\n".join(report["skipped"])
    assert re.search(r"\b[1-9]\d* gpu-marked tests", skipped) and "bench_swa_bwd_bwd.py" in skipped
    assert "Skipped (no GPU)" in (out / "gpucheck.md").read_text()
    # A second run replaces its own report; a directory of someone else's is refused.
    assert main(["gpucheck", "--out", str(out), "--bench-dir", os.path.join(REPO, "bench")]) == 0
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    _fails(["gpucheck", "--out", str(tmp_path / "theirs")], capsys, "--out", "without an earlier gpucheck report")


def test_gpucheck_test_phase_counts_and_report(tmp_path):
    """The pytest phase reads its JUnit report; the Markdown report shows each phase."""
    from ttt_kernels.cli import gpucheck

    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text(
        "def pytest_configure(config):\n    config.addinivalue_line('markers', 'gpu: x')\n"
    )
    (tests / "test_x.py").write_text(
        "import pytest\n"
        "@pytest.mark.gpu\ndef test_ok():\n    pass\n"
        "@pytest.mark.gpu\ndef test_bad():\n    assert 1 == 2\n"
        "@pytest.mark.gpu\ndef test_skip():\n    pytest.skip('no')\n"
        "def test_not_gpu():\n    pass\n"
    )
    phase = gpucheck._pytest(str(tests), ["test_x.py"], str(tmp_path), "x", 120)
    assert (phase["status"], phase["passed"], phase["failed"], phase["skipped"]) == ("failed", 1, 1, 1)
    assert len(phase["failures"]) == 1 and phase["failures"][0].endswith("test_x::test_bad"), phase["failures"]
    report = {
        "date": "d",
        "status": "not passed: gpu_tests",
        "machine": {"gpu": "H100"},
        "phases": {"gpu_tests": phase},
    }
    text = gpucheck.markdown(report)
    assert "## gpu_tests: failed" in text and "test_x::test_bad" in text and "1 passed, 1 failed" in text


@pytest.mark.slow
def test_bench_runs_the_quick_scripts(capsys):
    assert main(["bench", "--only", "rms_norm", "--bench-dir", os.path.join(REPO, "bench"), "--threads", "1"]) == 0


def test_subprocess_entry_points(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    for name in ("OMP_WAIT_POLICY", *GLIBC_MALLOC, "GLIBC_TUNABLES"):
        env.pop(name, None)
    r = subprocess.run([sys.executable, "-m", "ttt_kernels", "info"], capture_output=True, text=True, env=env)
    # The command line restarts itself with passive OpenMP threads (no spinning beside other processes) and, on glibc,
    # a malloc that keeps freed memory...
    assert r.returncode == 0 and "torch" in r.stdout and re.search(r"OpenMP wait\s+PASSIVE", r.stdout), r.stdout
    assert ("MALLOC_TRIM_THRESHOLD_=1073741824" in r.stdout) == _glibc(), r.stdout
    r = subprocess.run(  # ... unless the user chose
        [sys.executable, "-m", "ttt_kernels", "info"],
        capture_output=True,
        text=True,
        env={**env, "OMP_WAIT_POLICY": "active", "MALLOC_TRIM_THRESHOLD_": "12345"},
    )
    assert r.returncode == 0 and re.search(r"OpenMP wait\s+active", r.stdout), r.stdout
    assert re.search(r"malloc\s+MALLOC_TRIM_THRESHOLD_=12345\n", r.stdout), r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "ttt_kernels", "eval", str(tmp_path / "nope")], capture_output=True, text=True, env=env
    )
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "ttt_kernels", "--version"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.strip() == f"ttt-kernels {ttt_kernels.__version__}", r.stdout
    script = shutil.which("ttt-kernels")
    if script is None:
        for p in sys.path:  # a --target install puts the script next to the package
            candidate = os.path.join(p, "bin", "ttt-kernels")
            if os.path.isfile(candidate):
                script = candidate
    if script is not None:
        r = subprocess.run([script, "info"], capture_output=True, text=True, env=env)
        assert r.returncode == 0 and "ttt_kernels" in r.stdout


def test_tuned_environment_keeps_what_the_user_set():
    assert tuned_environment({}, glibc=True) == {"OMP_WAIT_POLICY": "PASSIVE", **GLIBC_MALLOC}
    assert tuned_environment({}, glibc=False) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert tuned_environment({"OMP_WAIT_POLICY": "ACTIVE"}, glibc=True) == GLIBC_MALLOC
    for name in GLIBC_MALLOC:  # one malloc setting of the user's: neither is added
        assert tuned_environment({name: "1", "OMP_WAIT_POLICY": "x"}, glibc=True) == {}
    assert tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, glibc=True) == {
        "OMP_WAIT_POLICY": "PASSIVE"
    }


# Where glibc's malloc puts a 24 MiB block and whether its memory stays with the process after free (mallinfo2):
# "mapped" (its own mmap, unmapped by free: the next such block is faulted in afresh) or in the heap, "kept" if in the
# heap and the heap did not shrink when it was freed (no trim).
_MALLOC_PROBE = """
import ctypes, json
FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in FIELDS]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
import torch
size = 24 << 20
before = libc.mallinfo2()
block = libc.malloc(size)
ctypes.memset(block, 1, size)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
mapped = during.hblkhd - before.hblkhd >= size
print(json.dumps(dict(mapped=mapped, kept=not mapped and after.arena >= during.arena)))
"""


def _malloc_probe(env: dict) -> dict:
    """_MALLOC_PROBE in a fresh Python with ``env`` added to this one's, less glibc's malloc variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    r = subprocess.run([sys.executable, "-c", _MALLOC_PROBE], capture_output=True, text=True, env={**base, **env})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.skipif(not _glibc(), reason="the malloc settings are glibc's")
def test_the_command_line_malloc_settings_keep_freed_memory():
    """What the settings are for: a 24 MiB block comes from the heap and stays there after free (glibc's defaults map
    it and unmap it: the next one is faulted in afresh); the trim threshold alone fixes the mmap threshold at 128 KiB,
    so every large block is mapped."""
    assert _malloc_probe({}) == dict(mapped=True, kept=False)
    assert _malloc_probe(GLIBC_MALLOC) == dict(mapped=False, kept=True)
    assert _malloc_probe({"MALLOC_TRIM_THRESHOLD_": GLIBC_MALLOC["MALLOC_TRIM_THRESHOLD_"]})["mapped"]


# ---------------------------------------------------------------------------------------------------------------------
# Errors: one message on stderr naming the problem, exit status 2, nothing half-written


def _fails(argv, capsys, *needles):
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0, err
    assert err.startswith("ttt-kernels: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_file):
    out = tmp_path_factory.mktemp("trained") / "run"
    assert _train(out, corpus_file, "--steps", "2") == 0
    return out


def test_error_missing_checkpoint(tmp_path, capsys):
    _fails(["eval", str(tmp_path / "nope")], capsys, "does not exist")
    _fails(["generate", str(tmp_path / "nope")], capsys, "does not exist")
    _fails(["train", "--resume", str(tmp_path / "nope")], capsys, "does not exist")
    (tmp_path / "empty").mkdir()
    _fails(["eval", str(tmp_path / "empty")], capsys, "manifest.json")


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_error_corrupt_checkpoint(tmp_path, trained, capsys, damage):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    (model,) = glob.glob(str(ckpt / "model-*.safetensors"))
    if damage == "flip":
        blob = bytearray(open(model, "rb").read())
        blob[-10] ^= 0xFF
        open(model, "wb").write(bytes(blob))
    elif damage == "truncate":
        open(model, "r+b").truncate(100)
    elif damage == "delete":
        os.remove(model)
    else:
        (ckpt / "manifest.json").write_text("{not json")
    expected = {"flip": "corrupt", "truncate": "corrupt", "delete": "missing", "manifest": "corrupt"}[damage]
    _fails(["eval", str(ckpt)], capsys, expected)
    _fails(["generate", str(ckpt)], capsys, expected)
    _fails(["train", "--resume", str(ckpt)], capsys, expected)


def test_error_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.bin").write_bytes(b"\0\1\2")
    for corpus in (tmp_path / "empty.txt", tmp_path / "dir"):
        out = tmp_path / "out"
        _fails(["train", "--out", str(out), "--corpus", str(corpus), *SMALL], capsys, "--corpus", "empty")
        assert not out.exists()
    _fails(["train", "--out", str(tmp_path / "o"), "--corpus", str(tmp_path / "missing")], capsys, "does not exist")
    (tmp_path / "short.txt").write_text("abc")
    _fails(["train", "--out", str(tmp_path / "o"), "--corpus", str(tmp_path / "short.txt"), *SMALL], capsys, "fewer")
    assert not (tmp_path / "o").exists()


def test_error_context_not_multiple_of_mini_batch(tmp_path, corpus_file, capsys):
    out = tmp_path / "out"
    args = ["train", "--out", str(out), "--corpus", corpus_file, *SMALL, "--context", "70"]
    _fails(args, capsys, "--context (70)", "multiple of the mini-batch size", "16")
    assert not out.exists()


def test_error_context_in_eval(trained, capsys):
    _fails(["eval", str(trained), "--context", "40"], capsys, "--context (40)", "mini-batch")


def test_error_unknown_preset(tmp_path, corpus_file, capsys):
    _fails(["train", "--out", str(tmp_path / "o"), "--preset", "huge"], capsys, "--preset", "unknown preset 'huge'")
    _fails(["train", "--out", str(tmp_path / "o"), "--set", "window"], capsys, "--set", "KEY=VALUE")
    _fails(["train", "--out", str(tmp_path / "o"), "--set", "windw=3"], capsys, "unknown fields", "windw")
    _fails(["train", "--out", str(tmp_path / "o"), "--set", "window=8"], capsys, "window (8)")
    assert not (tmp_path / "o").exists()


def test_error_does_not_fit_in_memory(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["train", "--out", str(out), "--preset", "3b", "--context", "65536", "--batch", "1024"]
    _fails(args, capsys, "does not fit in memory", "GiB", "available")
    assert not out.exists()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--min-lr-ratio", "nan", "--min-lr-ratio must be a finite number in [0, 1]"),
        ("--min-lr-ratio", "inf", "--min-lr-ratio must be a finite number in [0, 1]"),
        ("--beta1", "2", "--beta1 must be a finite number in [0, 1)"),
        ("--beta2", "-1", "--beta2 must be a finite number in [0, 1)"),
        ("--weight-decay", "-1", "--weight-decay must be a finite number in [0, inf)"),
        ("--seed", str(2**70), "--seed must be an integer in [0, 2^63)"),
        ("--save-every", "-1", "--save-every must be >= 0"),
    ],
)
def test_train_rejects_bad_numbers_up_front(tmp_path, corpus_file, capsys, option, value, message):
    """One line naming the option, before anything is written."""
    out = tmp_path / "run"
    _fails(["train", "--out", str(out), "--corpus", corpus_file, *SMALL, option, value], capsys, message)
    assert not out.exists()


def test_eval_rejects_bad_values_up_front(trained, capsys, tmp_path):
    for args, message in [
        (["--inner-lr", "nan"], "--inner-lr must be a finite number >= 0"),
        (["--context", "0"], "--context must be >= 1"),
        (["--json", str(tmp_path / "missing" / "x.json")], "--json: the directory of"),
    ]:
        _fails(["eval", str(trained), "--windows", "1", *args], capsys, message)


def test_train_rejects_a_vocabulary_below_the_bytes(tmp_path, corpus_file, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--corpus", corpus_file, *SMALL, "--set", "vocab_size=100"]
    _fails(args, capsys, "vocab_size must be >= 256")


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path, corpus_file):
    """A run killed with SIGTERM (as a scheduler does) saves a checkpoint at the step it reached, says where, exits
    with status 2, and --resume continues from there."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    argv = [sys.executable, "-m", "ttt_kernels", "train", "--out", str(out), "--corpus", corpus_file, *SMALL]
    proc = subprocess.Popen([*argv, "--steps", "100000", "--log-every", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    for line in proc.stdout:  # the first step's log line: training is under way
        if line.startswith("step"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "interrupted at step" in err and f"--resume {out}" in err and "Traceback" not in err, err
    saved = checkpoint.Checkpoint(str(out)).step
    assert saved >= 1
    r = subprocess.run([*argv[:3], "train", "--resume", str(out), "--stop-after", "1", "--no-progress"],
                       capture_output=True, text=True, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert checkpoint.Checkpoint(str(out)).step == saved + 1


def test_periodic_save_by_time(tmp_path, corpus_file, monkeypatch):
    """--save-minutes: a checkpoint after every step that ends that long after the last save (here every step)."""
    saves = []
    real_save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda *a, step, **k: saves.append(step) or real_save(*a, step=step, **k))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--corpus", corpus_file, *SMALL, "--steps", "3", "--save-minutes",
                 "1e-9"]) == 0  # fmt: skip
    assert saves == [1, 2, 3]
    assert main(["train", "--out", str(tmp_path / "b"), "--corpus", corpus_file, *SMALL, "--steps", "3",
                 "--save-minutes", "-1"]) == 2  # fmt: skip


def test_second_writer_is_refused(tmp_path, corpus_file, capsys):
    """While a run holds --out's lock, another run (fresh or --resume) on it is refused; the lock file goes with the
    run and a directory holding only a stale one is accepted."""
    import fcntl

    from ttt_kernels.cli.train import LOCK_FILE

    out = tmp_path / "run"
    assert _train(out, corpus_file, "--steps", "1") == 0
    assert not (out / LOCK_FILE).exists()
    with open(out / LOCK_FILE, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _fails(["train", "--resume", str(out), "--no-progress"], capsys, "is being written by another")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / LOCK_FILE).write_text("123\n")  # left by a killed run: no lock held
    assert _train(fresh, corpus_file, "--steps", "1") == 0


def test_non_utf8_file_names_and_prompts(tmp_path, corpus_file, capsys):
    """A corpus directory with a file name that is not UTF-8 trains, and a prompt of arbitrary bytes (what Python
    makes of $'\\xff' on the command line) generates."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with open(corpus_file, "rb") as f:
        text = f.read()
    with open(os.path.join(os.fsencode(corpus), b"caf\xe9.py"), "wb") as f:  # Latin-1 name
        f.write(text)
    (corpus / "b.py").write_bytes(text)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--corpus", str(corpus), *SMALL, "--steps", "1"]) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "def \udcff", "--max-new-tokens", "3", "--seed", "1"]) == 0
    assert capsys.readouterr().out


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["files"]["model"].pop("sha256"), "the sha256 of 'model' must be 64 hex digits"),
        (lambda m: m["files"]["model"].pop("name"), "the name of 'model' must be a file name"),
        (lambda m: m["files"].__setitem__("model", 3), "the entry of 'model' must be an object"),
        (lambda m: m.__setitem__("step", "abc"), "step must be an integer >= 0"),
        (lambda m: m["files"]["config"].__setitem__("name", "../outside.json"), "must be a file name inside"),
    ],
)
def test_hostile_manifests_give_one_line(trained, tmp_path, capsys, edit, message):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    _fails(["eval", str(copy), "--windows", "1"], capsys, message)


def test_trainer_state_without_settings(trained, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    trainer = copy / manifest["files"]["trainer"]["name"]
    state = json.loads(trainer.read_text())
    del state["settings"]
    trainer.write_text(json.dumps(state))
    data = trainer.read_bytes()
    manifest["files"]["trainer"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (copy / "manifest.json").write_text(json.dumps(manifest))
    _fails(["train", "--resume", str(copy), "--no-progress"], capsys, "lacks settings, history or validation")


def test_saves_leave_no_temporary_files(tmp_path, corpus_file):
    """A save writes every file through a temporary of ours (.tmp-*), the model too (not through safetensors' own
    .tmpXXXX): temporaries a killed save left are removed by the next save, and none remain after it."""
    out = tmp_path / "run"
    assert _train(out, corpus_file, "--steps", "2", "--stop-after", "1") == 0
    (out / ".tmp-left-by-a-kill").write_bytes(b"\0" * 100)
    assert main(["train", "--resume", str(out), "--stop-after", "1", "--no-progress"]) == 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp")]


def test_disk_full_during_a_save(tmp_path, corpus_file, capsys, monkeypatch):
    """A save that cannot write (ENOSPC, simulated in the model file's writer) gives one line and leaves the previous
    checkpoint loadable."""
    import errno

    out = tmp_path / "run"
    assert _train(out, corpus_file, "--steps", "2", "--stop-after", "1") == 0
    real_write = checkpoint._atomic_write

    def full(directory, name, write):
        if name.startswith("model-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(directory, name, write)

    monkeypatch.setattr(checkpoint, "_atomic_write", full)
    _fails(["train", "--resume", str(out), "--no-progress"], capsys, "No space left on device", "previous checkpoint")
    assert checkpoint.Checkpoint(str(out)).step == 1


def test_missing_safetensors_fails_before_training(tmp_path, corpus_file, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import safetensors.torch raises ImportError
    out = tmp_path / "run"
    _fails(["train", "--out", str(out), "--corpus", corpus_file, *SMALL], capsys, "needs the safetensors package")
    assert not out.exists()


def test_divergence_stops_before_the_step_and_keeps_the_last_checkpoint(tmp_path, corpus_file, capsys):
    """An absurd learning rate makes the second step's loss non-finite: training stops with one line before the
    weights take that step, and the checkpoint of step 1 stays loadable with finite weights."""
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--corpus", corpus_file, *SMALL, "--steps", "5", "--lr", "1e30"]
    _fails([*argv, "--save-every", "1", "--warmup", "0"], capsys, "training diverged at step", "is kept")
    ckpt = checkpoint.Checkpoint(str(out))
    model = TTTE2EModel(ckpt.config)
    ckpt.load_model(model)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_unwritable_out_fails_before_training(tmp_path, corpus_file, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    _fails(["train", "--out", str(blocker / "sub"), "--corpus", corpus_file, *SMALL], capsys, "--out: cannot write")
    assert blocker.read_text() == "x"


def test_out_refuses_a_directory_of_other_files(tmp_path, corpus_file, capsys):
    """A non-empty directory that is not a checkpoint of ours (here a project with its own config.json and files
    named like ours) is refused before training, and every file in it is left as it was."""
    out = tmp_path / "project"
    out.mkdir()
    files = {"config.json": '{"mine": 1}', "model-00000001.safetensors": "user data", ".tmp-keep": "x", "a.txt": "y"}
    for name, text in files.items():
        (out / name).write_text(text)
    _fails(["train", "--out", str(out), "--corpus", corpus_file, *SMALL], capsys, "not a ttt-kernels checkpoint")
    assert {p.name: p.read_text() for p in out.iterdir()} == files


def test_error_out_already_holds_a_checkpoint(trained, corpus_file, capsys):
    _fails(["train", "--out", str(trained), "--corpus", corpus_file, *SMALL], capsys, "already holds a checkpoint")
    checkpoint.Checkpoint(str(trained))


def test_error_resume_with_changed_settings(tmp_path, trained, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    _fails(["train", "--resume", str(ckpt), "--lr", "0.5"], capsys, "--lr 0.5", "differ")
    assert checkpoint.Checkpoint(str(ckpt)).step == 2


def test_error_bad_arguments(trained, tmp_path, capsys):
    _fails(["generate", str(trained), "--top-p", "0"], capsys, "--top-p")
    _fails(["generate", str(trained), "--temperature", "-1"], capsys, "--temperature")
    _fails(["generate", str(trained), "--prompt", ""], capsys, "--prompt")
    _fails(["train", "--out", str(tmp_path / "o"), "--steps", "0"], capsys, "--steps")
    _fails(["eval", str(trained), "--device", "cuda:0" if not torch.cuda.is_available() else "tpu"], capsys, "--device")
    _fails(["bench", "--bench-dir", str(tmp_path)], capsys, "--bench-dir")
    assert main(["train", "--no-such-option"]) == 2  # argparse's usage error


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, trained, monkeypatch):
    ckpt_dir = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt_dir)
    before = sorted(os.listdir(ckpt_dir))
    ckpt = checkpoint.Checkpoint(str(ckpt_dir))
    model = TTTE2EModel(ckpt.config)
    ckpt.load_model(model)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(
        CLIError, match=r"cannot save a checkpoint .*disk full \(the previous checkpoint there is intact"
    ):
        checkpoint.save(str(ckpt_dir), model, step=7, trainer={}, rng={"x": torch.zeros(1)})
    assert sorted(os.listdir(ckpt_dir)) == before
    assert checkpoint.Checkpoint(str(ckpt_dir)).step == 2

    fresh = tmp_path / "fresh"
    with pytest.raises(CLIError, match="disk full"):
        checkpoint.save(str(fresh), model, step=1, trainer={}, rng={"x": torch.zeros(1)})
    assert not fresh.exists()
