"""A Flower app whose ClientApp misbehaves on purpose, for end-to-end hostile-client runs on a real SuperLink.

``write_hostile_app(directory)`` writes an app directory: this project's ``pyproject.toml`` with the
ClientApp component pointed at a wrapper around the real one, and the wrapper module. The run config key
``hostile-mode`` picks the misbehaviour:

* ``off``: the honest client, unchanged (the clean baseline of a comparison);
* ``bomb``: partition 0 answers every training request with a ~40-byte payload that declares one sign
  vector of 2^28 entries as a constant coded bit stream (before bounded decoding: ~2.5 GiB of server memory
  while decoding it), the rest answer honestly;
* ``raise``: every training request fails in the ClientApp (an error reply from every node).

The server side is the real one (``fedprune.server.app:app``), so what is measured is what a deployment would see.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = "fedprune_hostile_clientapp"

_CLIENT_SOURCE = '''\
"""The honest fedprune ClientApp, wrapped to misbehave as ``hostile-mode`` says (tests/hostile_app.py)."""

import hashlib

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from fedprune.client.app import app as honest
from fedprune.protos import fedprune_wire_pb2 as pb

app = ClientApp()


def sign_bomb() -> bytes:
    """One SIGN tensor of 2^28 entries coded as a constant bit vector: ~40 bytes declaring 256 MiB of signs."""
    tensor = pb.Tensor(name="w", dtype=pb.SIGN, encoding=pb.Encoding.CODED_BITS, shape=[2**28], count=2**28,
                       model_q=65535)
    body = pb.Payload(tensors=[tensor]).SerializeToString()
    digest = hashlib.blake2b(body, digest_size=16).digest()
    return pb.Envelope(format_version=1, body=body, digest=digest).SerializeToString()


@app.query()
def describe(msg: Message, context):
    return honest(msg, context)


@app.evaluate()
def evaluate(msg: Message, context):
    return honest(msg, context)


@app.train()
def train(msg: Message, context):
    mode = context.run_config.get("hostile-mode", "off")
    if mode == "raise":
        raise RuntimeError("hostile client: refusing to train")
    reply = honest(msg, context)
    if mode == "bomb" and int(context.node_config.get("partition-id", -1)) == 0 and not reply.has_error():
        content = RecordDict(dict(reply.content.items()))
        content["fedprune"] = ConfigRecord({"payload": sign_bomb()})
        reply.content = content
    return reply
'''


_BROKEN_SERVER_SOURCE = '''\
"""A ServerApp that fails before the run writes anything (tests/hostile_app.py, ``broken_server``)."""

from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    raise RuntimeError("broken ServerApp for a test")
'''


def write_hostile_app(directory: Path, mode: str = "off", *, broken_server: bool = False) -> Path:
    """Write the hostile app into ``directory`` (created) and return it, ready for ``flwr run``; ``mode`` is
    the default ``hostile-mode`` (a run config override may change it). ``broken_server``: the ServerApp
    raises as soon as it starts (a run that fails before it can write results.json)."""
    if mode not in ("off", "bomb", "raise"):
        raise ValueError(f"hostile mode '{mode}' is not off, bomb or raise")
    directory.mkdir(parents=True, exist_ok=True)
    pyproject = (REPO / "pyproject.toml").read_text()
    pyproject, replaced = re.subn(r'(?m)^clientapp = ".*"$', f'clientapp = "{MODULE}:app"', pyproject)
    assert replaced == 1, "pyproject.toml has no clientapp component line"
    pyproject = pyproject.replace("[tool.flwr.app.config]\n", f'[tool.flwr.app.config]\nhostile-mode = "{mode}"\n', 1)
    # Only the wrapper module ships in this app; fedprune itself is imported from the installed package.
    pyproject = re.sub(r"(?ms)^\[tool\.setuptools[\].].*?(?=^\[(?!tool\.setuptools))", "", pyproject)
    if broken_server:
        pyproject = re.sub(r'(?m)^serverapp = ".*"$', 'serverapp = "fedprune_broken_serverapp:app"', pyproject)
        (directory / "fedprune_broken_serverapp.py").write_text(_BROKEN_SERVER_SOURCE)
    (directory / "pyproject.toml").write_text(pyproject)
    (directory / f"{MODULE}.py").write_text(_CLIENT_SOURCE)
    return directory
