"""Certificates, node keys and launch command lines (the tests that run Flower binaries are marked slow)."""

import os
import stat
import subprocess
import tomllib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from fedprune.deploy.certificates import CertificateError, Material, create_certificates, server_hosts
from fedprune.deploy.launch import ServerTLS, cli_connection_toml, superlink_command, supernode_command
from fedprune.simulation.flower_processes import flower_bin

from fedprune.cli import main


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


def _command_lines(tmp_path) -> tuple[list[str], list[str], list[str], Material]:
    """(secure SuperLink, insecure SuperLink, secure SuperNode command lines, the certificate material)."""
    material = create_certificates(tmp_path / "certs", nodes=1)
    secure = superlink_command(ServerTLS.from_directory(material.directory), database=tmp_path / "state.db")
    insecure = superlink_command(None)
    node = supernode_command("link:9092", root_cert=material.ca_cert, private_key=material.nodes[0].private_key,
                             node_config={"partition-id": 1, "num-partitions": 3, "model-dir": "/m"})
    return secure, insecure, node, material


def test_command_lines_are_secure_by_default(tmp_path):
    secure, insecure, node, material = _command_lines(tmp_path)
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth", "--database",
                 "--disable-runtime-dependency-installation"):
        assert flag in secure
    assert "--insecure" not in secure
    assert "--insecure" in insecure and "--ssl-certfile" not in insecure and "--enable-supernode-auth" not in insecure
    assert node[node.index("--node-config") + 1] == 'partition-id=1 num-partitions=3 model-dir="/m"'
    assert "--grpc-rere" in node and "--insecure" not in node
    with pytest.raises(ValueError, match="needs TLS"):
        supernode_command("link:9092", root_cert=None, private_key=material.nodes[0].private_key, node_config={})


@pytest.mark.slow  # runs each Flower binary's --help
def test_command_lines_use_only_flags_the_installed_flower_has(tmp_path):
    secure, insecure, node, _ = _command_lines(tmp_path)
    node = node[node.index("--") + 1:]  # fedprune.deploy.supernode_process's own options come before "--"
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


def _one_error_line(capsys, option: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"fedprune deploy: error: --{option}: "), err
    return err


def test_certs_into_an_existing_folder_keep_its_mode(tmp_path, capsys):
    existing = tmp_path / "home"
    existing.mkdir()
    os.chmod(existing, 0o755)  # think `--out .` or `--out ~`
    assert main(["deploy", "certs", "--out", str(existing), "--nodes", "1"]) == 0
    assert _mode(existing) == 0o755
    assert _mode(existing / "nodes") == 0o700  # created here: private
    for key in ("ca.key", "server.key", "nodes/node-0"):
        assert _mode(existing / key) == 0o600
    fresh = tmp_path / "a" / "b" / "certs"  # created here: private
    create_certificates(fresh)
    assert _mode(fresh) == 0o700


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_symlinked_ca_key_is_refused_and_its_target_untouched(tmp_path, overwrite):
    certs, victim = tmp_path / "certs", tmp_path / "victim.txt"
    certs.mkdir()
    victim.write_text("precious")
    (certs / "ca.key").symlink_to(victim)
    with pytest.raises(CertificateError, match="symbolic link"):
        create_certificates(certs, nodes=1, overwrite=overwrite)
    assert victim.read_text() == "precious" and (certs / "ca.key").is_symlink()
    assert sorted(p.name for p in certs.iterdir()) == ["ca.key"]  # checked before anything was written


def test_a_dangling_link_is_refused_not_taken_for_a_free_name(tmp_path, capsys):
    certs, target = tmp_path / "certs", tmp_path / "elsewhere" / "stolen.key"
    certs.mkdir()
    (certs / "ca.key").symlink_to(target)  # target does not exist: Path.exists() says False
    assert main(["deploy", "certs", "--out", str(certs)]) == 2
    assert "symbolic link" in _one_error_line(capsys, "out")
    assert not target.exists() and not target.parent.exists()
    (certs / "ca.key").unlink()
    (certs / "nodes").mkdir()
    (certs / "nodes" / "node-0.pub").symlink_to(tmp_path / "planted.pub")
    with pytest.raises(CertificateError, match="symbolic link"):
        create_certificates(certs, nodes=1)
    assert not (tmp_path / "planted.pub").exists()


@pytest.mark.parametrize(("argv", "option", "words"), [
    (["--days", "10000000"], "days", "give 1 to 36500"),
    (["--days", "0"], "days", "give 1 to 36500"),
    (["--nodes", "-3"], "nodes", "give 0 to"),
    (["--node-names", "edge-a,../escape"], "node-names", "'../escape'"),
    (["--node-names", "a,a"], "node-names", "distinct"),
    (["--node-names", "a", "--nodes", "2"], "node-names", "not both"),
    (["--hosts", "bad host"], "hosts", "'bad host'"),
    (["--hosts", ","], "hosts", "at least one host"),
])
def test_certs_arguments_are_checked_before_writing_and_blame_their_own_option(tmp_path, capsys, argv, option,
                                                                                words):
    out = tmp_path / "certs"
    assert main(["deploy", "certs", "--out", str(out), *argv]) == 2
    assert words in _one_error_line(capsys, option)
    assert not out.exists()


def test_connection_toml_keeps_a_hostile_address_inside_one_string(tmp_path, capsys):
    hostile = '127.0.0.1:9093"\ninsecure = true\n#'
    ca = create_certificates(tmp_path / "certs").ca_cert
    parsed = tomllib.loads(cli_connection_toml("fedprune-deploy", hostile, ca))
    connection = parsed["superlink"]["fedprune-deploy"]
    assert parsed["superlink"]["default"] == "fedprune-deploy"
    assert connection == {"address": hostile, "root-certificates": str(ca)}  # no `insecure` key
    assert tomllib.loads(cli_connection_toml("x", "h:1", None))["superlink"]["x"] == {"address": "h:1",
                                                                                      "insecure": True}
    # the CLI does not even get that far: an address is HOST:PORT
    home = tmp_path / "home"
    assert main(["deploy", "register", str(tmp_path / "node.pub"), "--superlink-address", hostile,
                 "--root-cert", str(ca), "--flwr-home", str(home)]) == 2
    _one_error_line(capsys, "superlink-address")
    assert not home.exists()
    for bad in ("h", "h:0", "h:70000", "h:x", "a b:1", "::1:9093"):
        assert main(["deploy", "supernode", "--superlink", bad, "--partition-id", "0", "--num-partitions", "1",
                     "--insecure", "--print"]) == 2
        assert "--superlink: " in capsys.readouterr().err
    assert main(["deploy", "supernode", "--superlink", "[::1]:9092", "--partition-id", "0", "--num-partitions",
                 "1", "--insecure", "--print", "--set", "a b=1"]) == 2
    assert "--set: " in capsys.readouterr().err


@pytest.mark.slow  # starts a SuperLink
def test_cli_superlink_execs_flower_and_register_adds_nodes_over_tls(tmp_path, capsys):
    import os
    import sys

    from fedprune.simulation.flower_processes import APP_DIR, OwnedProcess, free_port

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
