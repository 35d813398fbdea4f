"""Certificates, node keys and launch command lines (no processes kept running; fast)."""

import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from deploy.certificates import CertificateError, create_certificates, server_hosts
from deploy.launch import ServerTLS, superlink_command, supernode_command
from fedprune.cli import main
from simulation.flower_processes import flower_bin


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_material_is_private_signed_by_the_ca_and_valid_for_the_named_hosts(tmp_path):
    material = create_certificates(tmp_path / "certs", ["superlink.example.org", "10.1.2.3"], ["edge-a", "edge-b"])
    assert _mode(material.directory) == 0o700 and _mode(material.directory / "nodes") == 0o700
    for key in (material.ca_key, material.server_key, *(n.private_key for n in material.nodes)):
        assert _mode(key) == 0o600, key
    assert _mode(material.ca_cert) == 0o644
    ca = x509.load_pem_x509_certificate(material.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(material.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert server_hosts(material.server_cert) == ["superlink.example.org", "10.1.2.3"]
    for node in material.nodes:  # the formats flower-supernode and `flwr supernode register` read
        private = load_ssh_private_key(node.private_key.read_bytes(), None)
        public = load_ssh_public_key(node.public_key.read_bytes())
        assert isinstance(private.curve, ec.SECP384R1) and private.public_key() == public
    assert material.nodes[0].public_key.read_bytes() != material.nodes[1].public_key.read_bytes()


def test_existing_material_is_never_overwritten_unless_asked(tmp_path):
    first = create_certificates(tmp_path / "certs", nodes=1)
    before = first.ca_cert.read_bytes()
    with pytest.raises(CertificateError, match="already holds"):
        create_certificates(tmp_path / "certs", nodes=1)
    assert first.ca_cert.read_bytes() == before
    create_certificates(tmp_path / "certs", nodes=1, overwrite=True)
    assert first.ca_cert.read_bytes() != before
    with pytest.raises(CertificateError):
        create_certificates(tmp_path / "other", ["bad host"])
    with pytest.raises(CertificateError):
        create_certificates(tmp_path / "other2", nodes=["../escape"])


def _flags(binary: str) -> set[str]:
    text = subprocess.run([flower_bin(binary), "--help"], capture_output=True, text=True, timeout=60).stdout
    return {word.strip("[],") for word in text.split() if word.startswith(("--", "[--"))}


def test_command_lines_are_secure_by_default_and_use_only_flags_the_installed_flower_has(tmp_path):
    material = create_certificates(tmp_path / "certs", nodes=1)
    secure = superlink_command(ServerTLS.from_directory(material.directory), database=tmp_path / "state.db")
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth", "--database",
                 "--disable-runtime-dependency-installation"):
        assert flag in secure
    assert "--insecure" not in secure
    insecure = superlink_command(None)
    assert "--insecure" in insecure and "--ssl-certfile" not in insecure and "--enable-supernode-auth" not in insecure
    node = supernode_command("link:9092", root_cert=material.ca_cert, private_key=material.nodes[0].private_key,
                             node_config={"partition-id": 1, "num-partitions": 3, "model-dir": "/m"})
    assert node[node.index("--node-config") + 1] == 'partition-id=1 num-partitions=3 model-dir="/m"'
    assert "--grpc-rere" in node and "--insecure" not in node
    with pytest.raises(ValueError, match="needs TLS"):
        supernode_command("link:9092", root_cert=None, private_key=material.nodes[0].private_key, node_config={})
    for command, binary in ((secure, "flower-superlink"), (insecure, "flower-superlink"),
                            (node, "flower-supernode")):
        known = _flags(binary)
        assert {part for part in command if part.startswith("--")} <= known, binary


def test_cli_refuses_insecure_by_omission_and_warns_when_asked(tmp_path, capsys):
    assert main(["deploy", "supernode", "--superlink", "h:9092", "--partition-id", "0", "--num-partitions", "2",
                 "--print"]) == 2
    assert "--root-cert: required unless --insecure" in capsys.readouterr().err
    assert main(["deploy", "supernode", "--superlink", "h:9092", "--partition-id", "0", "--num-partitions", "2",
                 "--insecure", "--print"]) == 0
    captured = capsys.readouterr()
    assert "WARNING: --insecure" in captured.err and "--insecure" in captured.out
    assert main(["deploy", "certs", "--out", str(tmp_path / "c"), "--nodes", "2"]) == 0
    assert main(["deploy", "certs", "--out", str(tmp_path / "c"), "--nodes", "2"]) == 2  # refuses to overwrite
    assert main(["deploy", "superlink", "--certs", str(tmp_path / "c"), "--print"]) == 0
    assert "--enable-supernode-auth" in capsys.readouterr().out
    assert main(["deploy", "superlink", "--certs", str(tmp_path / "missing"), "--print"]) == 2


def test_compose_file_uses_the_official_1_39_images_read_only_certs_and_real_flags():
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parent.parent / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"superlink", "supernode-0", "supernode-1", "supernode-2"}
    assert "FROM flwr/superlink:1.39.0" in services["superlink"]["build"]["dockerfile_inline"]
    known = {"superlink": _flags("flower-superlink"), "supernode": _flags("flower-supernode")}
    for name, service in services.items():
        kind = "superlink" if name == "superlink" else "supernode"
        assert f"FROM flwr/{kind}:1.39.0" in service["build"]["dockerfile_inline"]
        assert "./certs:/certs:ro" in service["volumes"]
        flags = {item.split("=", 1)[0] for item in service["command"]}
        assert flags <= known[kind], (name, flags - known[kind])
        assert "--insecure" not in flags
    assert "--enable-supernode-auth" in services["superlink"]["command"]
    for index in range(3):
        command = services[f"supernode-{index}"]["command"]
        assert f"--auth-supernode-private-key=/certs/nodes/node-{index}" in command
        assert any(item.startswith(f"--node-config=partition-id={index} ") for item in command)


def test_cli_superlink_execs_flower_and_register_adds_nodes_over_tls(tmp_path, capsys):
    import os
    import sys

    from simulation.flower_processes import APP_DIR, OwnedProcess, free_port

    certs = tmp_path / "certs"
    assert main(["deploy", "certs", "--out", str(certs), "--nodes", "2"]) == 0
    fleet, control = free_port(), free_port()
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "link-home"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(APP_DIR), os.environ.get("PYTHONPATH", "")) if p)}
    link = OwnedProcess.start("fedprune deploy superlink", [
        sys.executable, "-m", "fedprune.cli", "deploy", "superlink", "--certs", str(certs), "--fleet-address",
        f"127.0.0.1:{fleet}", "--control-host", "127.0.0.1", "--control-port", str(control), "--database",
        str(tmp_path / "state.db")], env, tmp_path / "superlink.log")
    try:
        link.wait_listening(control, 90)
        capsys.readouterr()
        assert main(["deploy", "register", str(certs / "nodes" / "node-0.pub"), str(certs / "nodes" / "node-1.pub"),
                     "--superlink-address", f"127.0.0.1:{control}", "--root-cert", str(certs / "ca.crt"),
                     "--flwr-home", str(tmp_path / "cli-home")]) == 0
        out = capsys.readouterr().out
        assert out.count("node id ") == 2
        # without the deployment's CA the CLI cannot talk to the TLS Control API
        foreign = create_certificates(tmp_path / "foreign").ca_cert
        assert main(["deploy", "register", str(certs / "nodes" / "node-0.pub"), "--superlink-address",
                     f"127.0.0.1:{control}", "--root-cert", str(foreign), "--flwr-home", str(tmp_path / "h2")]) == 1
        assert (tmp_path / "state.db").is_file()
        assert "flower-superlink" in " ".join(open(f"/proc/{link.pid}/cmdline").read().split("\0"))  # exec'd
    finally:
        link.stop()
    assert not link.alive()
