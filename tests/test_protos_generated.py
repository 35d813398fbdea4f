"""The committed generated code is exactly what grpcio-tools produces from the committed schema."""

import subprocess
import sys
from pathlib import Path

PROTOS = Path(__file__).resolve().parent.parent / "protos"


def test_regenerating_gives_identical_files(tmp_path):
    for name in ("fedprune_wire.proto",):
        (tmp_path / name).write_text((PROTOS / name).read_text())
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", str(tmp_path / "fedprune_wire.proto")], check=True)
    for generated in ("fedprune_wire_pb2.py", "fedprune_wire_pb2.pyi"):
        assert (tmp_path / generated).read_bytes() == (PROTOS / generated).read_bytes(), generated


def test_generated_code_is_not_newer_than_the_protobuf_runtime():
    import google.protobuf

    header = next(line for line in (PROTOS / "fedprune_wire_pb2.py").read_text().splitlines()
                  if line.startswith("# Protobuf Python Version:"))
    gencode = tuple(int(x) for x in header.rsplit(" ", 1)[1].split("."))
    runtime = tuple(int(x) for x in google.protobuf.__version__.split(".")[:3])
    assert gencode <= runtime, (gencode, runtime)
