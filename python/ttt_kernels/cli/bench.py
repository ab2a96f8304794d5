"""``ttt-kernels bench``: runs the quick versions of the benchmark scripts of the source tree's bench/ directory.

The scripts are not part of the installed package (they compare against peers and write JSON results next to the
sources), so the command looks for them: ``--bench-dir``, else ``./bench``, else a ``bench/`` directory above the
package (an editable install or a source checkout on ``PYTHONPATH``). Each runs as its own process
(``python bench/bench_<name>.py --quick``) with this interpreter, printing its table as it goes.
"""

import os
import subprocess
import sys

from ttt_kernels.registry import BENCH_SCRIPTS

from .errors import CLIError


def find_bench_dir(explicit: str | None) -> str:
    if explicit is not None:
        if not os.path.isfile(os.path.join(explicit, "bench_rms_norm.py")):
            raise CLIError(f"--bench-dir: {explicit} holds no bench_*.py scripts (expected the source tree's bench/)")
        return explicit
    candidates = [os.path.join(os.getcwd(), "bench")]
    here = os.path.dirname(os.path.abspath(__file__))
    for _ in range(5):
        here = os.path.dirname(here)
        candidates.append(os.path.join(here, "bench"))
    for c in candidates:
        if os.path.isfile(os.path.join(c, "bench_rms_norm.py")):
            return c
    raise CLIError(
        "bench: the benchmark scripts (bench/bench_*.py) ship with the source tree, not with the installed package; "
        "run this from a checkout of ttt_kernels or pass --bench-dir PATH/TO/bench"
    )


def run(names: list | None, bench_dir: str | None, threads: int | None, extra: list | None = None) -> int:
    """Runs bench/bench_<name>.py --quick for each name (default: all of BENCH_SCRIPTS); 1 if one failed."""
    unknown = sorted(set(names or ()) - set(BENCH_SCRIPTS))
    if unknown:
        raise CLIError(f"--only: unknown script {', '.join(unknown)}; choose from {', '.join(BENCH_SCRIPTS)}")
    directory = find_bench_dir(bench_dir)
    failed = []
    for name in names or BENCH_SCRIPTS:
        script = os.path.join(directory, f"bench_{name}.py")
        if not os.path.isfile(script):
            raise CLIError(f"--only: {script} does not exist")
        cmd = [sys.executable, script, "--quick", *(["--threads", str(threads)] if threads else []), *(extra or [])]
        print(f"=== {name}: {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd, check=False).returncode != 0:
            failed.append(name)
        print(flush=True)
    if failed:
        print(f"ttt-kernels: error: bench: {', '.join(failed)} failed", file=sys.stderr)
        return 1
    return 0
