"""Long context: prefill of a prompt read as a stream (a 1-D token source: memmap, bytes, 1-D tensor) gives the
results of the [B, n] tensor, and its memory does not grow with the context (docs/long_context.md)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ttt_kernels.model import TTTE2EConfig, TTTE2EModel


def _model() -> TTTE2EModel:
    torch.manual_seed(0)
    return TTTE2EModel(TTTE2EConfig.preset("tiny", window=32, mini_batch_size=16)).double()


def test_prefill_reads_one_dimensional_sources(tmp_path):
    """A memmap of bytes, bytes, a 1-D tensor of another integer dtype and an int16 array, read in slices that are
    not multiples of b, give the logits and fast weights of the [1, n] tensor, bit for bit."""
    model = _model()
    tokens = torch.randint(0, 256, (1, 300), generator=torch.Generator().manual_seed(1))
    state, logits = model.prefill(tokens, return_logits=True, slice_tokens=50)
    ids = tokens[0].numpy().astype(np.uint8)
    ids.tofile(tmp_path / "prompt.bin")
    memmap = np.memmap(tmp_path / "prompt.bin", dtype=np.uint8, mode="r")
    for source in (memmap, ids.tobytes(), tokens[0].to(torch.int32), ids.astype(np.int16)):
        got, got_logits = model.prefill(source, return_logits=True, slice_tokens=50)
        assert torch.equal(got_logits, logits), type(source)
        assert got.pos == 300 and all(torch.equal(w, w2) for w, w2 in zip(got.fast, state.fast, strict=True))
    # A stream continues a state like a tensor does (other slice boundaries: the same up to rounding).
    first = model.prefill(memmap[:123], slice_tokens=64)
    continued = model.prefill(memmap[123:], first, slice_tokens=64)
    assert continued.pos == 300
    torch.testing.assert_close(continued.logits, state.logits, rtol=1e-10, atol=1e-10)


def test_prefill_rejects_bad_sources():
    model = _model()
    bad = [
        (np.zeros((2, 3), dtype=np.int64), r"got an array int64\[2, 3\]"),
        (np.zeros(3, dtype=np.float32), r"got an array float32\[3\]"),
        ([1, 2, 3], "got <class 'list'>"),
        (torch.zeros(3), r"got a tensor torch.float32\[3\]"),
        (b"", r"tokens must have >= 1 sequence of >= 1 tokens, got shape \(1, 0\)"),
    ]
    for source, message in bad:
        with pytest.raises(ValueError, match=message):
            model.prefill(source)
    with pytest.raises(RuntimeError, match=r"token ids must be in \[0, vocab_size=256\)"):
        model.prefill(np.array([1, 300, 2], dtype=np.int32))


# A fresh process per length: prefill of `n` random bytes from a memmap with the tiny preset (random weights); prints
# the peak RSS (VmHWM, reset after a 4K-token warm-up that allocates the caches) and the resident set before it.
_PEAK_CHILD = """
import json, sys
import numpy as np, torch
from ttt_kernels.model import TTTE2EConfig, TTTE2EModel

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

torch.set_num_threads(1)
torch.manual_seed(0)
path, n = sys.argv[1], int(sys.argv[2])
model = TTTE2EModel(TTTE2EConfig.preset("tiny")).eval()
source = np.memmap(path, dtype=np.uint8, mode="r")
model.prefill(source[:4096])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
before = status("VmRSS:")
state = model.prefill(source[:n])
print(json.dumps({"peak_kib": status("VmHWM:"), "before_kib": before, "pos": state.pos}))
"""


@pytest.mark.slow
def test_prefill_memory_is_flat_in_context_length(tmp_path):
    """Peak RSS of a 256K-token prefill (tiny preset, the prompt a memmap) within 1.2x of a 16K one: the state is the
    windows and the fast weights, the prompt is read a slice at a time."""
    path = tmp_path / "prompt.bin"
    np.random.default_rng(0).integers(0, 256, 256 * 1024, dtype=np.uint8).tofile(path)
    peaks = {}
    for n in (16 * 1024, 256 * 1024):
        out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(path), str(n)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])
        assert peaks[n]["pos"] == n
    short, long = peaks[16 * 1024], peaks[256 * 1024]
    assert long["peak_kib"] <= 1.2 * short["peak_kib"], peaks
    # Above the resident set before the prefill: what grows with the context would be hundreds of MiB at 256K (the
    # logits of every position: 256 MiB; keys/values beyond the window: 1 GiB); the allocator's own growth is less
    # than 64 MiB (measured: 69 MiB at 16K, 71 at 64K, 111 at 256K and at 1M).
    assert long["peak_kib"] - long["before_kib"] <= short["peak_kib"] - short["before_kib"] + 64 * 1024, peaks
