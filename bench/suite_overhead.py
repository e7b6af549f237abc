"""What the ReFrame layer costs: listing every variant, and the whole smoke suite's wall time.

``reframe -l`` loads every test file and expands every parameter combination; it is what a
user waits for before anything runs, so it is timed over several repetitions (median).
``--run`` also runs the whole smoke suite on this machine's ``local`` system (every
benchmark: its synthetic dataset fixture, then training to the smoke target) in a scratch
prefix, and prints each test's time from ReFrame's JSON report.

    python bench/suite_overhead.py                 # reframe -l, 5 repetitions
    python bench/suite_overhead.py --run           # and the whole smoke suite
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFRAME = ["reframe", "-C", str(ROOT / "site_config" / "settings.py"),
           "-c", str(ROOT / "reframe_tests")]
FOUND = re.compile(r"Found (\d+) check\(s\)")


def timed(command: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - started, result


def time_listing(repeats: int, workdir: Path) -> None:
    seconds, checks = [], "?"
    for _ in range(repeats):
        elapsed, result = timed([*REFRAME, "-l"], workdir)
        if result.returncode != 0:
            sys.exit(f"reframe -l failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        seconds.append(elapsed)
        match = FOUND.search(result.stdout)
        checks = match.group(1) if match else checks
    median = statistics.median(seconds)
    print(f"| reframe -l ({checks} variants on this system) | median {median:.2f} s, "
          f"min {min(seconds):.2f} s, max {max(seconds):.2f} s over {repeats} |")


def time_suite(workdir: Path) -> int:
    report = workdir / "report.json"
    elapsed, result = timed([*REFRAME, "-r", "--prefix", str(workdir / "run"),
                             "--report-file", str(report)], workdir)
    print(f"| whole smoke suite (reframe -r) | {elapsed:.1f} s wall, exit {result.returncode} |")
    if not report.exists():
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
        return 1
    cases = json.loads(report.read_text())["runs"][-1]["testcases"]
    print("\n| test | result | seconds (start to end, waits included) |\n|---|---|---|")
    for case in cases:
        if case["result"] != "skip":
            print(f"| {case['display_name']} | {case['result']} | {case['time_total']:.1f} |")
    skipped = sum(case["result"] == "skip" for case in cases)
    print(f"\n{skipped} variants skipped (not runnable on this system, with their reasons in "
          "ReFrame's output)")
    return result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="reframe -l repetitions")
    parser.add_argument("--run", action="store_true", help="also run the whole smoke suite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlbench-suite-") as scratch:
        workdir = Path(scratch)
        print("| what | time |\n|---|---|")
        time_listing(args.repeats, workdir)
        return time_suite(workdir) if args.run else 0


if __name__ == "__main__":
    sys.exit(main())
