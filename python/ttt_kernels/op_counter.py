"""Counts the ATen and custom op calls that reach the dispatcher: the unit of launch overhead on a GPU and of
Python/dispatch overhead on a CPU. Used by the model's tests (no host synchronization: no
``aten._local_scalar_dense``) and by bench/bench_model.py (op calls per step)."""

import collections

from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as ops: ...`` counts every op call under the dispatcher's Python key (forward and backward
    ops alike; the ops a custom op calls from C++ are not seen): ``ops.counts[name]``, ``ops.total``."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())
