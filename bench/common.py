"""The command line and the report shared by the benchmark scripts: --quick, --threads, --out."""

import argparse
import json

import torch

import ttt_kernels


def parse_args(doc: str, quick_help: str) -> argparse.Namespace:
    """--quick (what it shortens: quick_help), --threads (applied here) and --out; the description is doc's first
    line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N) first (default: torch's default)")
    parser.add_argument("--out", help="write the results as JSON to this path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def report(results: list, print_table, out: str | None, repeats) -> None:
    """Prints the versions and print_table(results); with out, writes the results and the run's metadata as JSON."""
    print(f"ttt_kernels {ttt_kernels.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_table(results)
    if out:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": repeats}
        with open(out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


def run(doc: str, bench, print_table, repeats: dict, quick_repeats: dict) -> None:
    """The command line of a script whose --quick lowers only the repeats per shape: bench(repeats) -> results."""
    args = parse_args(doc, "fewer repeats")
    chosen = quick_repeats if args.quick else repeats
    report(bench(chosen), print_table, args.out, chosen)
