"""The op registry (ttt_kernels.registry): every op on every backend against its reference (forward and gradients,
what ``ttt-kernels selfcheck`` runs), and everything generated from it or checked against it: the README's op table,
the bench scripts, the public ops."""

import glob
import os

import pytest

from ttt_kernels import ops, registry
from ttt_kernels.cli import selfcheck

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("backend", list(selfcheck.backends()))
@pytest.mark.parametrize("op", registry.OPS, ids=lambda op: op.name)
def test_op_matches_reference(op, backend):
    for seed in range(2):
        result = selfcheck.check(op, backend, seed)
        assert result.ok, result


def test_every_public_op_is_registered():
    names = {op.name for op in registry.OPS}
    assert set(ops.__all__) - {"clip_sgd_update_"} == names  # the in-place clip shares clip_sgd_update's entry


def test_readme_op_table_is_the_registry():
    with open(os.path.join(REPO, "README.md")) as f:
        assert registry.op_table() in f.read(), "README.md: paste ttt_kernels.registry.op_table() over the op table"


def test_bench_scripts_are_the_registry():
    scripts = {
        os.path.basename(p)[len("bench_") : -len(".py")] for p in glob.glob(os.path.join(REPO, "bench", "bench_*.py"))
    }
    assert scripts == set(registry.BENCH_SCRIPTS)
