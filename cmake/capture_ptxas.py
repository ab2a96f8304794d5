"""Compiler launcher for nvcc: runs the compile command unchanged and saves its ptxas report beside the object.

nvcc -Xptxas=-v prints, per kernel and arch, the registers, shared memory, stack frame and spill bytes on stderr.
CMake calls this as `python capture_ptxas.py <nvcc> <args...>`; the report lands in `<object>.ptxas.log` and
resource_report.py turns all of them into cuda_resources.json.
"""

import re
import subprocess
import sys

REPORT_LINE = re.compile(r"^(ptxas info|\s+\d+ bytes stack frame)")


def main() -> int:
    command = sys.argv[1:]
    result = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    report = result.stderr
    # Keep the build log readable: pass through everything except the informational ptxas lines.
    sys.stderr.write("".join(line for line in report.splitlines(keepends=True) if not REPORT_LINE.match(line)))
    if result.returncode == 0 and "-o" in command:
        with open(command[command.index("-o") + 1] + ".ptxas.log", "w") as log:
            log.write(report)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
