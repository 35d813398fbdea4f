"""``flower-supernode`` with a chosen idle poll: how long an idle SuperNode waits before it asks the SuperLink
for a message again.

Flower 1.39's SuperNode waits 3 s after every empty pull and checks for its ClientApp's reply every 0.5 s;
both are constants in ``flwr.supernode.start_client_internal``, so a message that arrives just after a pull
waits up to 3 s before the node sees it — most of a small deployed round (BENCHMARKS.md, "Deployed
rounds"). Run as ``python -m fedprune.deploy.supernode_process --idle-poll S -- <flower-supernode
arguments>``, this process replaces those two waits with ``S`` and ``min(S, 0.5)`` (through a stand-in for
the ``time`` module that one Flower module sees, nothing else) and then runs Flower's own
``flower-supernode`` entry point unchanged. Shorter waits mean more pull requests at the SuperLink while
nodes are idle (one per node every ``S`` seconds), which is why Flower's 3 s stays the default.
``tests/test_warm_executor.py`` fails when Flower's waits move.
"""

from __future__ import annotations

import argparse
import sys
import time
from types import ModuleType

from flwr.supernode import start_client_internal
from flwr.supernode.cli.flower_supernode import flower_supernode

FLOWER_IDLE_WAIT = 3  # seconds, ``time.sleep(3)`` after an empty pull
FLOWER_REPLY_WAIT = 0.5  # seconds, ``time.sleep(0.5)`` while the reply (or its content) is not there yet


class PollClock:
    """Stands in for ``time`` inside Flower's SuperNode loop: its two waits shortened, everything else as is."""

    def __init__(self, idle: float) -> None:
        self.idle, self.reply = idle, min(idle, FLOWER_REPLY_WAIT)

    def sleep(self, seconds: float) -> None:
        if seconds == FLOWER_IDLE_WAIT:
            seconds = self.idle
        elif seconds == FLOWER_REPLY_WAIT:
            seconds = self.reply
        time.sleep(seconds)

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def use_idle_poll(idle: float, module: ModuleType = start_client_internal) -> PollClock:
    """Make ``module`` (Flower's SuperNode loop) wait ``idle`` seconds after an empty pull."""
    clock = PollClock(idle)
    module.time = clock  # type: ignore[attr-defined]
    return clock


def main(argv: list[str] | None = None) -> None:
    """Parse ``--idle-poll S -- ARGS``, shorten the waits, run ``flower-supernode ARGS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m fedprune.deploy.supernode_process")
    parser.add_argument("--idle-poll", type=float, required=True, help="seconds between an idle node's pulls")
    args = parser.parse_args(argv[:split])
    if not 0.05 <= args.idle_poll <= 60:
        parser.error("--idle-poll must be between 0.05 and 60 seconds")
    use_idle_poll(args.idle_poll)
    sys.argv = ["flower-supernode", *argv[split + 1:]]
    flower_supernode()


if __name__ == "__main__":
    main()
