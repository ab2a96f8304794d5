"""Turns the ptxas reports captured by capture_ptxas.py into cuda_resources.json.

Output: {"archs": ["sm_80", ...], "kernels": [{"kernel", "mangled", "source", "arch", "registers", "shared_bytes",
"stack_bytes", "spill_store_bytes", "spill_load_bytes", "barriers"}, ...]}. Fails if an object has no report or a
requested arch produced no kernel, so a silently dropped arch cannot pass.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '(\S+)' for '(sm_\w+)'")
FRAME = re.compile(
    r"ptxas info\s*: Function properties for (\S+)\s*\n"
    r"\s*(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
USAGE = re.compile(r"ptxas info\s*: Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")


def parse(report: str, source: str) -> list[dict]:
    kernels = []
    # Each entry block runs from "Compiling entry function" to the next one.
    starts = [m.start() for m in ENTRY.finditer(report)] + [len(report)]
    for begin, end in zip(starts, starts[1:]):
        block = report[begin:end]
        entry = ENTRY.search(block)
        frame = FRAME.search(block)
        usage = USAGE.search(block)
        if not (entry and frame and usage):
            raise SystemExit(f"resource_report: cannot parse the ptxas report of {source}:\n{block}")
        kernels.append(
            {
                "mangled": entry.group(1),
                "source": source,
                "arch": entry.group(2),
                "registers": int(usage.group(1)),
                "barriers": int(usage.group(2) or 0),
                "shared_bytes": int(usage.group(3) or 0),
                "stack_bytes": int(frame.group(2)),
                "spill_store_bytes": int(frame.group(3)),
                "spill_load_bytes": int(frame.group(4)),
            }
        )
    return kernels


def demangle(names: list[str]) -> list[str]:
    if not names or shutil.which("c++filt") is None:
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", required=True, help="comma-separated, e.g. '80,90a'")
    parser.add_argument("--out", required=True)
    parser.add_argument("objects", nargs="*")
    args = parser.parse_args()

    kernels = []
    for obj in args.objects:
        log = obj + ".ptxas.log"
        if not os.path.exists(log):
            raise SystemExit(f"resource_report: no ptxas report for {obj} (was it compiled through capture_ptxas.py?)")
        source = os.path.basename(obj).split(".")[0] + ".cu"
        with open(log) as f:
            kernels += parse(f.read(), source)
    for kernel, name in zip(kernels, demangle([k["mangled"] for k in kernels])):
        kernel["kernel"] = name
    archs = [f"sm_{a}" for a in args.archs.split(",") if a]
    missing = [a for a in archs if args.objects and not any(k["arch"] == a for k in kernels)]
    if missing:
        raise SystemExit(f"resource_report: no kernel was compiled for {missing}")
    kernels.sort(key=lambda k: (k["source"], k["kernel"], k["arch"]))
    with open(args.out, "w") as f:
        json.dump({"archs": archs, "kernels": kernels}, f, indent=1)
    print(f"resource_report: {len(kernels)} kernel builds over {archs} -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
