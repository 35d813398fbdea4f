"""``flower-supernode`` as fedprune runs it: Flower's own entry point with two changes to its SuperNode loop.

**A message of a run that is no longer running is dropped whole.** Flower 1.39's SuperNode creates the task
and stores the message before it pulls the message's content from the SuperLink; when that pull says the
run is over (``RunNotRunningException``, a ``BaseException``, which its cleanup ``except Exception`` does
not catch), the message and its task stay behind. An executor takes the task and waits for content that
never comes; 60 s later the task's token expires and the SuperNode sends an error reply for that dead
message, and from then on the node pushes each reply one message late (it pushes only right after a pull
that brought a message), so every round of the next run times out — what a server restart in the middle
of a round led to (``tests/test_deploy_loopback.py``). Here that error reaches Flower's own cleanup as an
ordinary exception: the message and its content are deleted and the task finished as failed.

**A chosen idle poll**: how long an idle SuperNode waits before it asks the SuperLink for a message again.
Flower 1.39's SuperNode waits 3 s after every empty pull and checks for its ClientApp's reply every 0.5 s;
both are constants in ``flwr.supernode.start_client_internal``, so a message that arrives just after a pull
waits up to 3 s before the node sees it — most of a small deployed round (BENCHMARKS.md, "Deployed
rounds"). Run as ``python -m fedprune.deploy.supernode_process --idle-poll S -- <flower-supernode
arguments>``, this process replaces those two waits with ``S`` and ``min(S, 0.5)`` (through a stand-in for
the ``time`` module that one Flower module sees, nothing else); without ``--idle-poll`` Flower's waits
stay. Shorter waits mean more pull requests at the SuperLink while nodes are idle (one per node every
``S`` seconds), which is why Flower's 3 s stays the default.
``tests/test_warm_executor.py`` fails when Flower's waits move.
"""

from __future__ import annotations

import argparse
import sys
import time
from types import ModuleType

from flwr.supercore.run import RunNotRunningException
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


class RunEndedWhilePulling(RuntimeError):
    """The SuperLink said the run is over while the SuperNode pulled a message's content."""


def drop_messages_of_ended_runs(module: ModuleType = start_client_internal) -> None:
    """Make ``module``'s message pull hand a run-is-over answer to Flower's cleanup as an ordinary error."""
    pull_and_store = module._pull_and_store_message

    def pull_and_store_message(**kwargs: object) -> int | None:
        pull_object = kwargs["pull_object"]

        def pull_object_or_raise(run_id: int, object_id: str) -> bytes:
            try:
                return pull_object(run_id, object_id)  # type: ignore[operator]
            except RunNotRunningException:
                raise RunEndedWhilePulling(f"run {run_id} is no longer running") from None

        return pull_and_store(**{**kwargs, "pull_object": pull_object_or_raise})

    module._pull_and_store_message = pull_and_store_message  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    """Parse ``[--idle-poll S] -- ARGS``, apply both changes, run ``flower-supernode ARGS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m fedprune.deploy.supernode_process")
    parser.add_argument("--idle-poll", type=float, default=float(FLOWER_IDLE_WAIT),
                        help="seconds between an idle node's pulls (Flower's 3 s by default)")
    args = parser.parse_args(argv[:split])
    if not 0.05 <= args.idle_poll <= 60:
        parser.error("--idle-poll must be between 0.05 and 60 seconds")
    drop_messages_of_ended_runs()
    if args.idle_poll != FLOWER_IDLE_WAIT:
        use_idle_poll(args.idle_poll)
    sys.argv = ["flower-supernode", *argv[split + 1:]]
    flower_supernode()


if __name__ == "__main__":
    main()
