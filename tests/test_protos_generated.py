"""The committed generated code is exactly what grpcio-tools produces from the committed schemas."""

import subprocess
import sys
from pathlib import Path

import pytest

PROTOS = Path(__file__).resolve().parent.parent / "protos"


def test_regenerating_gives_identical_files(tmp_path):
    for name in ("fedprune_wire.proto",):
        (tmp_path / name).write_text((PROTOS / name).read_text())
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", str(tmp_path / "fedprune_wire.proto")], check=True)
    for generated in ("fedprune_wire_pb2.py", "fedprune_wire_pb2.pyi"):
        assert (tmp_path / generated).read_bytes() == (PROTOS / generated).read_bytes(), generated


def test_regenerating_the_edge_service_gives_identical_files(tmp_path):
    # Compiled as fedprune/protos/… (protos/Makefile) so the _grpc module imports `fedprune.protos.…_pb2`.
    (tmp_path / "fedprune" / "protos").mkdir(parents=True)
    (tmp_path / "fedprune" / "protos" / "edge_inference.proto").write_text(
        (PROTOS / "edge_inference.proto").read_text())
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.",
                    "--grpc_python_out=.", "fedprune/protos/edge_inference.proto"], check=True, cwd=tmp_path)
    for generated in ("edge_inference_pb2.py", "edge_inference_pb2.pyi", "edge_inference_pb2_grpc.py"):
        assert (tmp_path / "fedprune" / "protos" / generated).read_bytes() == (PROTOS / generated).read_bytes(), \
            generated
    assert "from fedprune.protos import edge_inference_pb2" in (PROTOS / "edge_inference_pb2_grpc.py").read_text()


@pytest.mark.parametrize("name", ["fedprune_wire_pb2.py", "edge_inference_pb2.py"])
def test_generated_code_is_not_newer_than_the_protobuf_runtime(name):
    import google.protobuf

    header = next(line for line in (PROTOS / name).read_text().splitlines()
                  if line.startswith("# Protobuf Python Version:"))
    gencode = tuple(int(x) for x in header.rsplit(" ", 1)[1].split("."))
    runtime = tuple(int(x) for x in google.protobuf.__version__.split(".")[:3])
    assert gencode <= runtime, (gencode, runtime)


def test_generated_grpc_stubs_import_with_the_installed_grpcio():
    from fedprune.protos import edge_inference_pb2_grpc

    assert hasattr(edge_inference_pb2_grpc, "EdgeInferenceStub")
