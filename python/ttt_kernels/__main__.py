"""``python -m ttt_kernels``: the ``ttt-kernels`` command line (see :mod:`ttt_kernels.cli`)."""

import sys

from ttt_kernels.cli import main

if __name__ == "__main__":
    sys.exit(main())
