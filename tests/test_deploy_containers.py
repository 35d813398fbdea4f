"""deploy/compose.yaml and the build context's .dockerignore: real flags, and no key where it does not belong.

Docker is not needed: the compose file is parsed as YAML and the .dockerignore is evaluated
with Docker's own matching rules (last matching line wins, ``!`` re-includes, a pattern that
matches a folder covers everything under it, ``**`` spans any number of folders).
"""

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from fedprune.simulation.flower_processes import flower_bin

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose.yaml"
NODES = ("supernode-0", "supernode-1", "supernode-2")


def _flags(*command: str) -> set[str]:
    text = subprocess.run([flower_bin(command[0]), *command[1:], "--help"], capture_output=True, text=True,
                          timeout=60).stdout
    return {word.strip("[],") for word in text.split() if word.startswith(("--", "[--"))}


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _mounts(service: dict) -> list[tuple[str, str]]:
    """(host source, container target) of every volume entry, short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts.append((source, target))
    return mounts


def _cert_mounts(service: dict) -> dict[str, str]:
    """Certificate-directory files mounted into a service: path inside the cert dir -> container path."""
    prefix = "${FEDPRUNE_CERTS:-./certs}/"
    return {source.removeprefix(prefix): target for source, target in _mounts(service) if source.startswith(prefix)}


def _kind_and_flags(name: str, service: dict) -> tuple[str, set[str]]:
    """('superlink' or 'supernode', the --flags of the service's command)."""
    return ("superlink" if name == "superlink" else "supernode"), {item.split("=", 1)[0] for item in service["command"]}


def test_compose_file_uses_the_official_1_39_images_secure_flags_and_one_partition_per_node(services):
    assert set(services) == {"superlink", *NODES}
    for name, service in services.items():
        kind, flags = _kind_and_flags(name, service)
        assert f"FROM flwr/{kind}:1.39.0" in service["build"]["dockerfile_inline"]
        assert "--insecure" not in flags
    assert "--enable-supernode-auth" in services["superlink"]["command"]
    for index, name in enumerate(NODES):
        assert services[name]["entrypoint"] == ["fedprune", "deploy", "supernode"]  # SuperNode + warm executor
        assert f"--partition-id={index}" in services[name]["command"]
        assert "--executor=flower" not in services[name]["command"]


@pytest.mark.slow  # runs each Flower binary's --help
def test_compose_commands_use_only_flags_the_installed_flower_has(services):
    known = {"superlink": _flags("flower-superlink"), "supernode": _flags("fedprune", "deploy", "supernode")}
    for name, service in services.items():
        kind, flags = _kind_and_flags(name, service)
        assert flags <= known[kind], (name, flags - known[kind])


def test_each_container_mounts_only_its_own_key_material_and_never_the_ca_key(services):
    every_source = [source for service in services.values() for source, _ in _mounts(service)]
    assert not [s for s in every_source if "ca.key" in s or s.rstrip("/").endswith(("certs", "nodes"))]
    assert not [s for s in every_source if s in ("..", "../", ".", "./")]  # no repository (with deploy/certs)
    for service in services.values():
        for volume in service["volumes"]:
            if not isinstance(volume, str) and volume["type"] == "bind" and "certs" in volume["source"]:
                assert volume["read_only"] and volume["bind"]["create_host_path"] is False
    assert _cert_mounts(services["superlink"]) == {"ca.crt": "/certs/ca.crt", "server.crt": "/certs/server.crt",
                                                   "server.key": "/certs/server.key"}
    for index, name in enumerate(NODES):
        assert _cert_mounts(services[name]) == {"ca.crt": "/certs/ca.crt", f"nodes/node-{index}": "/certs/node.key"}
        assert "--key=/certs/node.key" in services[name]["command"]
        assert "--root-cert=/certs/ca.crt" in services[name]["command"]
    link = services["superlink"]["command"]
    for flag, path in (("ssl-ca-certfile", "ca.crt"), ("ssl-certfile", "server.crt"), ("ssl-keyfile", "server.key")):
        assert f"--{flag}=/certs/{path}" in link


def _pattern(text: str) -> re.Pattern:
    """One .dockerignore line as Docker's pattern matcher reads it (``**``, ``*``, ``?``)."""
    text = text.strip().strip("/")
    out, i = "", 0
    while i < len(text):
        if text.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif text.startswith("**", i):
            out, i = out + ".*", i + 2
        elif text[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif text[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(text[i]), i + 1
    return re.compile(out)


def _ignored(path: str, lines: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out of the build context."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = _pattern(line[1:] if negate else line)
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def test_the_build_context_can_never_carry_certificates_or_keys(services):
    for service in services.values():
        assert service["build"]["context"] == ".."  # the repository root, where .dockerignore lives
        assert "COPY --chown=app:app . /opt/fedprune" in service["build"]["dockerfile_inline"]
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    secret = ["deploy/certs/ca.key", "deploy/certs/ca.crt", "deploy/certs/server.key", "deploy/certs/nodes/node-0",
              "deploy/certs/nodes/node-0.pub", "certs/ca.key", "certs/nodes/edge-a", "deploy/mycerts/nodes/node-1",
              "deploy/mycerts/server.key", "deploy/state.db", "server/certs/ca.key", "my-ca/ca.key", ".git/config",
              ".venv/bin/python", "runs/hns/results.json", "deploy/__pycache__/cli.cpython-311.pyc"]
    needed = ["pyproject.toml", "README.md", "deploy/cli.py", "deploy/compose.yaml", "server/run_config.py",
              "client/edge_inference.py", "protos/edge_inference_pb2.py", "fedprune/cli.py", "kernels/__init__.py",
              "simulation/flower_processes.py", "models/__init__.py", "data/sources.py", "strategies/__init__.py"]
    assert [p for p in secret if not _ignored(p, lines)] == []
    assert [p for p in needed if _ignored(p, lines)] == []
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in setuptools["packages"]:  # every installed package's folder reaches the image
        folder = setuptools.get("package-dir", {}).get(package, package)
        assert not _ignored(f"{folder}/__init__.py", lines), package
