"""Flower's SuperNode loop as ``deploy.supernode_process`` changes it: a message of an ended run is dropped whole.

Runs Flower's real ``_pull_and_store_message`` against a real in-memory NodeState and ObjectStore; only the
SuperLink's answers (``receive``, ``pull_object``) are stand-ins. The first test pins Flower 1.39's leak
(fails when Flower fixes it: then the change can go), the second shows the change closes it.
"""

import types

import httpx
import pytest
from fedprune.deploy.supernode_process import RunEndedWhilePulling, drop_messages_of_ended_runs, main
from fedprune.deploy.task_retry import gives_up, task_retry_invoker
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import Status, SubStatus
from flwr.supercore.inflatable.inflatable_object import get_object_tree
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run, RunNotRunningException
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode import start_client_internal
from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

RUN_ID, NODE_ID = 42, 7


def _pull_a_message_of_an_ended_run(pull_and_store) -> tuple[int | None, InMemoryNodeState]:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, 0, 1  # the "server" that sends it
    store = ObjectStoreFactory().store()
    state = InMemoryNodeState(store)
    state.set_node_id(NODE_ID)
    state.store_run(Run.create_empty(RUN_ID))  # the node saw this run before the SuperLink restarted
    message = Message(RecordDict({"config": ConfigRecord({"round": 3})}), dst_node_id=NODE_ID, message_type="train")
    message.metadata.__dict__["_message_id"] = message.object_id
    received = iter([(message, get_object_tree(message))])

    def pull_object(run_id: int, object_id: str) -> bytes:
        raise RunNotRunningException()  # what the SuperLink answers for a run it has finished

    returned = pull_and_store(state=state, object_store=store, node_config={}, receive=lambda: next(received),
                              get_run=None, get_fab=None, pull_object=pull_object, confirm_message_received=None,
                              trusted_entities=None)
    return returned, state


def test_flower_leaves_the_message_and_a_pending_task_behind():
    returned, state = _pull_a_message_of_an_ended_run(start_client_internal._pull_and_store_message)
    assert returned is None
    assert len(state.get_messages()) == 1  # no content will ever come for it
    [task] = state.get_tasks()
    assert task.status.status == Status.PENDING  # an executor takes it and waits; its expiry replies 60 s later


def test_the_changed_loop_deletes_the_message_and_fails_its_task():
    holder = types.SimpleNamespace(_pull_and_store_message=start_client_internal._pull_and_store_message)
    drop_messages_of_ended_runs(holder)
    returned, state = _pull_a_message_of_an_ended_run(holder._pull_and_store_message)
    assert returned is None
    assert state.get_messages() == []
    [task] = state.get_tasks()
    assert task.status.status == Status.FINISHED and task.status.sub_status == SubStatus.FAILED
    assert "no longer running" in task.status.details


def test_the_change_leaves_other_errors_and_successes_alone():
    holder = types.SimpleNamespace(_pull_and_store_message=lambda **kw: kw["pull_object"](RUN_ID, "id"))
    drop_messages_of_ended_runs(holder)
    assert holder._pull_and_store_message(pull_object=lambda run, obj: b"content") == b"content"

    def refused(run: int, obj: str) -> bytes:
        raise RunNotRunningException()

    with pytest.raises(RunEndedWhilePulling, match="run 42 is no longer running"):
        holder._pull_and_store_message(pull_object=refused)

    def broken(run: int, obj: str) -> bytes:
        raise ConnectionError("link down")

    with pytest.raises(ConnectionError):
        holder._pull_and_store_message(pull_object=broken)


def test_supernode_process_refuses_a_bad_idle_poll():
    with pytest.raises(SystemExit) as stopped:
        main(["--idle-poll", "0.001", "--", "--insecure"])
    assert stopped.value.code == 2


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/runtime/pull-object")
    return httpx.HTTPStatusError("refused", request=request, response=httpx.Response(code, request=request))


def test_the_executors_own_calls_end_on_a_refused_task_instead_of_interrupting_the_process():
    assert gives_up(_status_error(401)) and gives_up(_status_error(403)) and gives_up(_status_error(500))
    assert not gives_up(_status_error(503)) and not gives_up(_status_error(504))
    assert not gives_up(httpx.ConnectError("refused")) and gives_up(httpx.ConnectError("SSL: CERTIFICATE failed"))
    calls = []

    def refused_once() -> None:
        calls.append(1)
        raise _status_error(401)

    with pytest.raises(httpx.HTTPStatusError):  # raised to the caller, no retry, no SIGINT to this process
        task_retry_invoker().invoke(refused_once)
    assert calls == [1]
