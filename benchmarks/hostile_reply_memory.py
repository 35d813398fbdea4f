"""Server memory and round time of a round in which one client sends an inflating ~40-byte reply.

Usage: python benchmarks/hostile_reply_memory.py [--code DIR] [--dataset fashion-mnist] [--rounds 2]

Runs the same static-magnitude simulation twice on a private SuperLink with Ray (10 clients, all sampled
every round): once with honest clients, once with partition 0 answering every training request with a
sign vector of 2^28 entries coded as a constant bit stream (tests/hostile_app.py, mode ``bomb``). While
each run goes, it samples the peak resident memory (VmHWM) of the process that hosts the ServerApp, from
/proc, so the figure does not depend on the code under test reporting it. ``--code DIR`` runs the server
and clients from another fedprune checkout (e.g. a ``git worktree`` of an older commit) by putting it first
on the SuperLink's PYTHONPATH; the launcher and the hostile wrapper come from this checkout.

Prints one line per run and round (accuracy, seconds, dropped replies) and
``run=<clean|bomb> server_peak_mib=<float>``, then the bomb/clean ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedprune.server.run_config import RunSettings  # noqa: E402
from fedprune.simulation.launcher import run_simulation  # noqa: E402

from tests.hostile_app import write_hostile_app  # noqa: E402

SERVER_PROCESSES = ("flwr-simulation", "flwr-serverapp")


def _server_peaks_kib() -> dict[int, int]:
    """VmHWM (KiB) of every live process whose command line names a ServerApp host."""
    peaks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not any(name in cmdline for name in SERVER_PROCESSES):
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[int(entry)] = int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return peaks


class PeakSampler:
    """Samples ServerApp hosts' VmHWM every ``interval`` seconds; ``peak_kib`` is the largest seen."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak_kib, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max([self.peak_kib, *_server_peaks_kib().values()])
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", default=None, help="run server and clients from this fedprune checkout")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.code:
        os.environ["PYTHONPATH"] = str(Path(args.code).resolve())
    work = Path(tempfile.mkdtemp(prefix="fedprune-hostile-bench-"))
    app = write_hostile_app(work / "app")
    peaks = {}
    for mode in ("clean", "bomb"):
        settings = RunSettings(strategy="static-magnitude", density=0.1, dataset=args.dataset,
                               model="fl-cnn" if args.dataset == "fashion-mnist" else "digits-cnn",
                               partition="iid", num_clients=10, clients_per_round=10, rounds=args.rounds,
                               out=str(work / mode), extra=(("hostile_mode", "off" if mode == "clean" else "bomb"),))
        started = time.perf_counter()
        with PeakSampler() as sampler:
            document = run_simulation(settings, app_dir=app, progress=lambda line: None)
        for entry in document["rounds"]:
            dropped = [r["reason"][:80] for r in entry.get("rejected_replies", [])]
            print(f"run={mode} round={entry['round']} acc={entry['accuracy']:.4f} seconds={entry['seconds']:.2f} "
                  f"dropped={dropped}", flush=True)
        peaks[mode] = sampler.peak_kib / 1024
        print(f"run={mode} server_peak_mib={peaks[mode]:.0f} wall_seconds={time.perf_counter() - started:.1f}",
              flush=True)
    print(f"bomb/clean server peak ratio {peaks['bomb'] / peaks['clean']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
