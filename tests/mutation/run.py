#!/usr/bin/env python3
"""Mutation testing of the CUDA kernels: do the simulator tests catch the bugs a kernel author makes?

Copies the repository (tracked and untracked, not ignored files) into a temporary directory, builds the package there
once, without CUDA and with the test library, into a private virtual environment, and checks that every mutant's
tests pass on that build (the baseline). Then, for each mutant of tests/mutation/mutants.py: applies it, rebuilds
(only the translation units that include the changed file recompile), runs its tests and restores the file. A mutant
is caught when a test fails, crashes or runs past a time limit. The checkout itself is never modified.

    python tests/mutation/run.py [--only ID ...] [--list] [--jobs N] [--json out.json] [--keep-going] [--keep]

Run it with the Python of the development environment: the build and the tests use its torch, pytest and build
tools. See tests/mutation/README.md.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mutants import MUTANTS, Mutant, Selection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cuda_tools import find_cuda_tool  # noqa: E402 (tests/cuda_tools.py, found through the path above)

ROOT = Path(__file__).resolve().parents[2]
# A mutant's tests may run TIMEOUT_FACTOR times as long as on the unmutated build, and at least MIN_TIMEOUT seconds,
# before the run counts as a hang (a loaded machine slows every run down).
TIMEOUT_FACTOR = 5
MIN_TIMEOUT = 120
# The results of a mutant; the catch rate counts the first two.
CAUGHT, MISSED = "caught", "missed"
BUILD_ERROR, SKIPPED, NOT_RUN = "build error", "skipped (baseline failed)", "not run"


# A line of pytest's short summary, "FAILED <node id> - <message>": the node id ends at the first space, but for the
# brackets of its parameters, which may hold " - " too.
SUMMARY_LINE = re.compile(r"(?:FAILED|ERROR) ([^\s\[]+(?:\[.*?\](?= - |$))?)")


class CatalogueError(Exception):
    pass


# ---- processes ---------------------------------------------------------------------------------------------------


def group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reaps the leader, which as a zombie would still count as a member of its group
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(proc: subprocess.Popen) -> None:
    """Stops the command's process group: SIGTERM, which ninja passes on to the compilers it runs in process groups
    of their own, then SIGKILL to whatever of the group is left after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while group_alive(proc) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_alive(proc):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_logged(cmd: list, log: Path, cwd: Path, env: dict, timeout: float | None = None) -> tuple[int | None, float]:
    """Runs cmd with its output in `log`; returns (exit status, seconds), the status None after a timeout. The
    command runs in its own process group, killed as a whole on a timeout or an interrupt: a build runs compilers
    under cmake and ninja, and a hung test may leave simulator threads spinning."""
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            status = None
        except BaseException:
            stop_group(proc)
            raise
    return status, time.monotonic() - start


def first_failure(status: int | None, log: Path, timeout: float) -> str:
    """What ended a pytest run that did not pass: the first failing test (pytest's summary lists it, -ra), a
    timeout or a crash."""
    if status is None:
        return f"timeout after {timeout:.0f} s"
    if status < 0:
        try:
            return f"crash ({signal.Signals(-status).name})"
        except ValueError:
            return f"crash (signal {-status})"
    for line in log.read_text(errors="replace").splitlines():
        if found := SUMMARY_LINE.match(line):
            return found.group(1)
    return f"pytest exit status {status}"


# ---- the work directory ------------------------------------------------------------------------------------------


@dataclass
class TestRun:
    passed: bool
    seconds: float
    first_failure: str


class Workspace:
    """A copy of the repository with a virtual environment of its own, where the (mutated) package is built and
    installed and its tests run."""

    def __init__(self, directory: Path, jobs: int):
        self.directory = directory
        self.src = directory / "src"
        self.venv = directory / "venv"
        self.python = self.venv / "bin" / "python"
        self.build_dir = directory / "build"
        self.selftest_sass = directory / "arch_selftest.o"
        self.logs = directory / "logs"
        self.logs.mkdir(parents=True)
        self.jobs = jobs

    def copy_sources(self) -> int:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        paths = [os.fsdecode(p) for p in listed.split(b"\0") if p]
        for relative in paths:
            source = ROOT / relative
            target = self.src / relative
            if not source.is_symlink() and not source.exists():
                continue  # tracked, but deleted in the checkout
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir() and not source.is_symlink():  # a submodule
                shutil.copytree(source, target, symlinks=True)
            else:
                shutil.copy2(source, target, follow_symlinks=False)
        return len(paths)

    def create_venv(self) -> None:
        """A venv that sees this interpreter's packages (torch, pytest, the build tools) without running their .pth
        files: an editable install of ttt_kernels there puts an import hook first in sys.meta_path, which would
        import the checkout's build instead of the mutated one whatever sys.path says. Directories listed in a .pth
        file join sys.path without the .pth files inside them being run."""
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)], check=True)
        purelib = subprocess.run(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        parents = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
        Path(purelib, "_ttt_mutation_parent_env.pth").write_text("\n".join(parents) + "\n")

    def env(self) -> dict:
        # PYTHONPATH could put the checkout's package first; the kernel coverage check fails any partial run.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("TTT_KERNELS_KERNEL_COV")}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def build(self, log: Path) -> tuple[bool, float]:
        """Builds and installs the package into the venv as a developer does (README.md, .ci/run); the build
        directory persists, so a rebuild recompiles only what a change affects."""
        env = self.env() | {
            "TTT_KERNELS_CUDA": "OFF",
            "TTT_KERNELS_SIM": "ON",
            "TTT_KERNELS_TESTING": "ON",
            "CMAKE_BUILD_PARALLEL_LEVEL": str(self.jobs),
        }
        cmd = [str(self.python), "-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-deps"]
        status, seconds = run_logged([*cmd, ".", f"-Cbuild-dir={self.build_dir}"], log, self.src, env)
        return status == 0, seconds

    def imported_package(self) -> Path:
        """Where `import ttt_kernels` finds the package in the tests' interpreter and working directory; raises
        unless it is the venv's build."""
        found = subprocess.run(
            [str(self.python), "-c", "import ttt_kernels; print(ttt_kernels.__file__); print(ttt_kernels.lib_dir())"],
            cwd=self.src,
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        for path in found:
            if not Path(path).resolve().is_relative_to(self.venv.resolve()):
                raise RuntimeError(f"the tests would import ttt_kernels from {path}, not from {self.venv}")
        return Path(found[0])

    def build_selftest_sass(self, log: Path) -> tuple[bool, float]:
        """nvcc's object of tests/native/arch_selftest.cu for sm_80 and sm_90a (the flags of CMakeLists.txt's CUDA
        kernels), from the (mutated) sources, for the tests of a Selection with nvcc_sass. False when nvcc,
        cuobjdump or nvdisasm is missing (the log says which) or the compile fails."""
        tools = {name: find_cuda_tool(name) for name in ("nvcc", "cuobjdump", "nvdisasm")}
        if not all(tools.values()):
            log.write_text(f"not found: {', '.join(name for name, path in tools.items() if not path)}\n")
            return False, 0.0
        archs = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ("80", "90a")]
        cmd = [tools["nvcc"], "-O3", "-std=c++17", *archs, "--expt-relaxed-constexpr", "-Werror=all-warnings"]
        cmd += ["-Iinclude", "-Itests/native", "-c", "tests/native/arch_selftest.cu", "-o", str(self.selftest_sass)]
        status, seconds = run_logged(cmd, log, self.src, self.env())
        return status == 0, seconds

    def run_tests(self, selection: Selection, log: Path, timeout: float) -> TestRun:
        cmd = [str(self.python), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *selection.pytest_args()]
        env = self.env()
        if selection.nvcc_sass:
            tool_dirs = {os.path.dirname(find_cuda_tool(name)) for name in ("cuobjdump", "nvdisasm")}
            env |= {"TTT_KERNELS_TESTING_SASS": str(self.selftest_sass)}
            env["PATH"] = os.pathsep.join([*sorted(tool_dirs), env.get("PATH", "")])
        status, seconds = run_logged(cmd, log, self.src, env, timeout)
        return TestRun(status == 0, seconds, "" if status == 0 else first_failure(status, log, timeout))


@contextlib.contextmanager
def applied(path: Path, mutant: Mutant):
    """The file with the mutant applied inside the block, restored byte for byte after it."""
    text = path.read_bytes()
    path.write_bytes(text.replace(mutant.original.encode(), mutant.replacement.encode(), 1))
    try:
        yield
    finally:
        path.write_bytes(text)


def locate(mutant: Mutant, root: Path) -> int:
    """The line of `root / mutant.file` the mutant changes; raises unless its original text occurs exactly once."""
    text = (root / mutant.file).read_bytes()
    original = mutant.original.encode()
    if b"\n" in original or text.count(original) != 1:
        raise CatalogueError(
            f"{mutant.id}: its original text occurs {text.count(original)} times in {mutant.file} (need exactly once, "
            "within one line): fix tests/mutation/mutants.py"
        )
    return text[: text.index(original)].count(b"\n") + 1


# ---- results -------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    mutant: Mutant
    line: int
    result: str = NOT_RUN
    caught_by: str = ""
    build_seconds: float | None = None
    test_seconds: float | None = None

    def note(self) -> str:
        """The 'caught by' column: what caught the mutant, the log of its build error, or why it is missed."""
        if self.result == MISSED:
            reasons = [self.mutant.expected.removeprefix("missed: ")] if self.mutant.expected else []
            return "; ".join(reasons + ([f"needs {self.mutant.needs}"] if self.mutant.needs else []))
        return self.caught_by

    def as_json(self) -> dict:
        m = self.mutant
        return {
            "id": m.id,
            "file": m.file,
            "line": self.line,
            "description": m.description,
            "original": m.original,
            "replacement": m.replacement,
            "tests": str(m.tests),
            "expected": m.expected,
            "needs": m.needs,
            "result": self.result,
            "caught_by": self.caught_by,
            "build_seconds": self.build_seconds,
            "test_seconds": self.test_seconds,
        }


@dataclass
class Report:
    results: list[Result]
    baseline_build_seconds: float | None = None
    baseline: dict[Selection, TestRun] = field(default_factory=dict)
    interrupted: bool = False

    def count(self, result: str) -> int:
        return sum(r.result == result for r in self.results)

    def print_table(self) -> None:
        rows = [("id", "file:line", "description", "result", "caught by")]
        for r in self.results:
            result = r.result + (" (expected)" if r.result == MISSED and r.mutant.expected else "")
            rows.append((r.mutant.id, f"{r.mutant.file}:{r.line}", r.mutant.description, result, r.note()))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            print(("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]).rstrip())

    def print_summary(self) -> None:
        caught, missed = self.count(CAUGHT), self.count(MISSED)
        expected = sum(r.result == MISSED and bool(r.mutant.expected) for r in self.results)
        others = [f"{self.count(kind)} {kind}" for kind in (BUILD_ERROR, SKIPPED, NOT_RUN) if self.count(kind)]
        print(f"\n{len(self.results)} mutants: {caught} caught, {missed} missed ({expected} expected)", end="")
        print("".join(f", {other}" for other in others))
        if caught + missed:
            rate = f"catch rate: {caught} of {caught + missed} = {100 * caught / (caught + missed):.1f}%"
            if expected and caught + missed - expected:
                rate += f" ({100 * caught / (caught + missed - expected):.1f}% without the expected misses)"
            print(rate)
        surprises = [r.mutant.id for r in self.results if r.result == CAUGHT and r.mutant.expected]
        if surprises:
            print(f"caught although marked as expected misses (update mutants.py): {', '.join(surprises)}")
        timed = [r for r in self.results if r.test_seconds is not None]
        if self.baseline_build_seconds is not None:
            baseline_tests = sum(run.seconds for run in self.baseline.values())
            times = [f"baseline build {self.baseline_build_seconds:.0f} s", f"baseline tests {baseline_tests:.0f} s"]
            if timed:
                build = sum(r.build_seconds for r in timed) / len(timed)
                tests = sum(r.test_seconds for r in timed) / len(timed)
                total = sum(r.build_seconds + r.test_seconds for r in timed)
                times.append(
                    f"{len(timed)} mutants {total / 60:.1f} min (each: build {build:.0f} s, tests {tests:.0f} s)"
                )
            print("time: " + ", ".join(times))

    def as_json(self, work_directory: Path | None) -> dict:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

        return {
            "repository": str(ROOT),
            "commit": git("rev-parse", "HEAD"),
            "uncommitted_changes": bool(git("status", "--porcelain")),
            "command": sys.argv,
            "work_directory": str(work_directory) if work_directory else None,
            "interrupted": self.interrupted,
            "baseline": {
                "build_seconds": self.baseline_build_seconds,
                "tests": [
                    {"tests": str(s), "passed": run.passed, "seconds": run.seconds, "first_failure": run.first_failure}
                    for s, run in self.baseline.items()
                ],
            },
            "mutants": [r.as_json() for r in self.results],
            "summary": {kind: self.count(kind) for kind in (CAUGHT, MISSED, BUILD_ERROR, SKIPPED, NOT_RUN)},
        }


# ---- the run -------------------------------------------------------------------------------------------------------


def mutate_and_test(work: Workspace, report: Report, keep_going: bool) -> bool:
    """The baseline, then every mutant; False when the run stopped at a failure of its own (a build error, a
    failing baseline) without --keep-going."""
    print(f"building the unmutated package in {work.directory} (TTT_KERNELS_CUDA=OFF TTT_KERNELS_TESTING=ON) ...")
    log = work.logs / "baseline.build.log"
    built, report.baseline_build_seconds = work.build(log)
    if not built:
        print(f"the unmutated build failed after {report.baseline_build_seconds:.0f} s, see {log}")
        return False
    print(f"built in {report.baseline_build_seconds:.0f} s; the tests import {work.imported_package()}")

    selections = list(dict.fromkeys(r.mutant.tests for r in report.results))
    for i, selection in enumerate(selections):
        log = work.logs / f"baseline.tests{i}.log"
        if selection.nvcc_sass and not work.build_selftest_sass(work.logs / "baseline.nvcc.log")[0]:
            report.baseline[selection] = TestRun(False, 0.0, f"no nvcc object, see {work.logs / 'baseline.nvcc.log'}")
            print(f"baseline {selection}: not run: nvcc's SASS is unavailable, see {work.logs / 'baseline.nvcc.log'}")
            continue
        run = report.baseline[selection] = work.run_tests(selection, log, timeout=None)
        outcome = "passed" if run.passed else f"FAILED ({run.first_failure}, see {log})"
        print(f"baseline {selection}: {outcome} in {run.seconds:.0f} s", flush=True)
        if not run.passed and not keep_going:
            return False

    ok = all(run.passed for run in report.baseline.values())
    for n, r in enumerate(report.results, 1):
        m = r.mutant
        print(f"[{n}/{len(report.results)}] {m.id} ({m.file}:{r.line}): ", end="", flush=True)
        baseline = report.baseline[m.tests]
        if not baseline.passed:
            r.result = SKIPPED
            print(r.result)
            continue
        with applied(work.src / m.file, m):
            log = work.logs / f"{m.id}.build.log"
            built, r.build_seconds = work.build(log)
            if built and m.tests.nvcc_sass:
                log = work.logs / f"{m.id}.nvcc.log"
                built, nvcc_seconds = work.build_selftest_sass(log)
                r.build_seconds += nvcc_seconds
            if not built:
                r.result, r.caught_by = BUILD_ERROR, str(log)
                print(f"BUILD ERROR after {r.build_seconds:.0f} s, see {log}")
                if not keep_going:
                    return False
                ok = False
                continue
            timeout = max(MIN_TIMEOUT, TIMEOUT_FACTOR * baseline.seconds)
            run = work.run_tests(m.tests, work.logs / f"{m.id}.tests.log", timeout)
        r.test_seconds = run.seconds
        r.result, r.caught_by = (MISSED, "") if run.passed else (CAUGHT, run.first_failure)
        print(
            f"build {r.build_seconds:.0f} s, tests {run.seconds:.0f} s: {r.result} {r.caught_by}".rstrip(), flush=True
        )
    return ok


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count(),
        metavar="N",
        help="parallel jobs of the builds (default: every core)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="go on after a mutant that does not build or a test selection that fails on the unmutated build",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (sources, build, logs)")
    return parser.parse_args(argv)


def list_mutants(mutants: list[Mutant]) -> int:
    try:
        for m in mutants:
            tags = "".join(f" [{tag}]" for tag in (m.needs, m.expected and "expected missed") if tag)
            print(f"{m.id:34} {m.file}:{locate(m, ROOT)}{tags}\n    {m.description}\n    tests: {m.tests}")
    except CatalogueError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    by_id = {m.id: m for m in MUTANTS}
    unknown = [i for i in args.only or () if i not in by_id]
    if unknown:
        print(f"unknown mutant ids: {', '.join(unknown)} (--list shows them)", file=sys.stderr)
        return 2
    mutants = [by_id[i] for i in dict.fromkeys(args.only)] if args.only else MUTANTS
    # Mutants of one file run one after the other: restoring a file makes the next build recompile its units again.
    files = list(dict.fromkeys(m.file for m in mutants))
    mutants = sorted(mutants, key=lambda m: files.index(m.file))
    if args.list:
        return list_mutants(mutants)

    # `kill` restores and cleans up like Ctrl-C.
    signal.signal(signal.SIGTERM, raise_interrupt)
    directory = Path(tempfile.mkdtemp(prefix="ttt-mutation-"))
    report = None
    status = 1
    try:
        work = Workspace(directory, args.jobs)
        print(f"copied {work.copy_sources()} files of {ROOT} to {work.src}")
        report = Report([Result(m, locate(m, work.src)) for m in mutants])
        work.create_venv()
        status = 0 if mutate_and_test(work, report, args.keep_going) else 1
    except KeyboardInterrupt:
        print("\ninterrupted: the results below are partial")
        status = 130
        if report:
            report.interrupted = True
    except CatalogueError as e:
        print(e, file=sys.stderr)
    finally:
        if report:
            if any(r.result != NOT_RUN for r in report.results):
                print()
                report.print_table()
            report.print_summary()
            if args.json:
                args.json.write_text(json.dumps(report.as_json(directory if args.keep else None), indent=1) + "\n")
                print(f"results written to {args.json}")
        if args.keep:
            print(f"work directory kept: {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
