"""The catalogue of kernel mutants (tests/mutation/mutants.py), checked without building anything: every mutant
applies to the sources as they are, and every kernel source has mutants."""

from collections import Counter
from pathlib import Path

import pytest
from mutation.mutants import MUTANTS

ROOT = Path(__file__).resolve().parents[1]
# The kernel sources and the simulator's CUTLASS prelude. gemm_bf16.cu and gemm_fp16.cu only instantiate the
# templates of gemm_cutlass.cuh: any change to them that still links changes nothing.
INSTANTIATION_UNITS = ("gemm_bf16.cu", "gemm_fp16.cu")
KERNEL_SOURCES = sorted(
    [
        path
        for path in [*(ROOT / "csrc" / "cuda").glob("*.cu"), *(ROOT / "csrc" / "cuda").glob("*.cuh")]
        if path.name not in INSTANTIATION_UNITS
    ]
    + [ROOT / "csrc" / "cuda" / "cutlass_sim.h"]
    + [ROOT / "include" / "ttt_kernels" / "device" / name for name in ("arch.h", "fragment_layout.h")]
)


def test_ids_are_unique_and_there_are_enough_mutants():
    repeated = [mutant_id for mutant_id, count in Counter(m.id for m in MUTANTS).items() if count > 1]
    assert not repeated, f"ids used more than once: {repeated}"
    assert len(MUTANTS) >= 30


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.id)
def test_mutant_applies_to_exactly_one_place(mutant):
    source = (ROOT / mutant.file).read_text()
    assert "\n" not in mutant.original, "the original text must lie within one line"
    assert source.count(mutant.original) == 1, f"{mutant.file}: the original text must occur exactly once"
    assert mutant.replacement != mutant.original
    assert mutant.description and "\n" not in mutant.description
    assert mutant.tests.paths and all((ROOT / path).is_file() for path in mutant.tests.paths)
    assert not mutant.expected or mutant.expected.startswith("missed: ")
    assert mutant.needs in ("", "racecheck", "boundscheck")


def test_every_kernel_source_has_a_mutant():
    mutated = {ROOT / m.file for m in MUTANTS}
    assert [str(path.relative_to(ROOT)) for path in KERNEL_SOURCES if path not in mutated] == []
