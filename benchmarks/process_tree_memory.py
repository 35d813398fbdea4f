"""Run a command and report the peak summed RSS of its whole process tree (sampled from /proc).

Usage: python benchmarks/process_tree_memory.py [--interval 0.5] -- COMMAND...
Prints the command's own output, then `peak_tree_rss_mib=<float> peak_processes=<int> seconds=<float>`.
Ray workers, the SuperLink and the ServerApp are all descendants of the command, so they are counted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return children


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0  # the process ended between listing and reading
    return 0


def tree_rss(root: int) -> tuple[int, int]:
    """Summed RSS (KiB) and process count of ``root`` and all its descendants."""
    children = _children_map()
    stack, total, count = [root], 0, 0
    while stack:
        pid = stack.pop()
        total += _rss_kib(pid)
        count += 1
        stack.extend(children.get(pid, []))
    return total, count


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    start = time.perf_counter()
    process = subprocess.Popen(command)
    peak, peak_count = 0, 0
    while process.poll() is None:
        rss, count = tree_rss(process.pid)
        if rss > peak:
            peak, peak_count = rss, count
        time.sleep(args.interval)
    print(f"peak_tree_rss_mib={peak / 1024:.1f} peak_processes={peak_count} "
          f"seconds={time.perf_counter() - start:.1f} exit={process.returncode}", flush=True)
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
