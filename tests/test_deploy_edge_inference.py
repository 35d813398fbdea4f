"""Edge inference: the ClientApp keeps its trained model; a real gRPC server answers like the in-process model.

Training runs on the in-process Grid (fast); the inference service is a real gRPC server on a
loopback port, asked through real gRPC channels.
"""

import dataclasses
import logging
import os
import pickle
import shutil

import grpc
import numpy as np
import pytest
import torch
from fedprune.client.app import app as client_app
from fedprune.client.edge_inference import EdgeInferenceServer, EdgeTLS, channel, describe, is_loopback_host, predict
from fedprune.client.edge_model import EDGE_MODEL_NAME, load_edge_model, save_edge_model
from fedprune.client.hidenseek import STATE_DENSE, STATE_PRIOR, STATE_SCORES, STATE_SETUP, Setup, _model, _stored
from fedprune.client.local_loss import add_label_prior
from fedprune.client.settings import client_settings
from fedprune.data import load_dataset
from fedprune.deploy.certificates import create_certificates
from fedprune.kernels.sign_supermask import fold
from fedprune.protos import edge_inference_pb2 as pb
from fedprune.protos import edge_inference_pb2_grpc as pb_grpc
from fedprune.protos.codec import decode
from fedprune.server.run_config import RunSettings
from fedprune.server.runner import run_federation

from tests.inprocess_grid import InProcessGrid


def _train(settings, tmp_path):
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config())
    for i, node in enumerate(grid.node_ids):
        grid.contexts[node].node_config["model-dir"] = str(tmp_path / f"node-{i}")
    document = run_federation(grid, settings, progress=lambda line: None)
    assert document["status"] == "completed"
    return grid


@pytest.fixture(scope="module")
def test_images():
    splits = load_dataset("digits")
    return splits.test.x[:40], splits.test.y[:40]


@pytest.fixture(scope="module")
def hidenseek_run(tmp_path_factory):
    """Two HideNseek rounds of 4 nodes, each keeping its model under ``models/node-<i>`` (trained once)."""
    root = tmp_path_factory.mktemp("models")
    settings = RunSettings(dataset="digits", model="digits-cnn", partition="iid", strategy="hidenseek", density=0.3,
                           score="magnitude", rounds=2, num_clients=4, clients_per_round=4, personal_eval_every=0,
                           score_lr=0.01, out=str(root / "run"))
    return settings, _train(settings, root), root


def _personal_reference(grid, node, settings):
    """The node's personalized model built the way the ClientApp evaluates it (dense folded weights, its own
    label prior in the last bias: HideNseek trains logit-adjusted by default)."""
    context = grid.contexts[node]
    setup = Setup(_stored(context, STATE_SETUP), (1, 8, 8), 10)
    dense = {k: v for k, v in setup.theta0.items() if k not in setup.mask}
    dense.update(decode(_stored(context, STATE_DENSE)).tensors)
    model, _ = _model(client_settings(settings.to_run_config()), (1, 8, 8), 10, setup, dense,
                      decode(_stored(context, STATE_SCORES)).tensors)
    prior = decode(_stored(context, STATE_PRIOR)).tensors["label-prior"]
    assert prior.shape == (10,) and np.isfinite(prior).all()
    return add_label_prior(fold(model), prior).eval()


def test_hidenseek_nodes_keep_their_personalized_folded_compact_model(hidenseek_run, test_images):
    settings, grid, root = hidenseek_run
    x, _ = test_images
    models = []
    for i, node in enumerate(grid.node_ids):
        stored = load_edge_model(root / f"node-{i}" / EDGE_MODEL_NAME)
        assert (stored.strategy, stored.round, stored.personalized) == ("hidenseek", 2, True)
        assert stored.density == pytest.approx(0.3, abs=0.01)
        personal = _personal_reference(grid, node, settings)
        with torch.no_grad():
            reference = personal(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(stored.predict(x), reference, rtol=1e-4, atol=1e-4)
        dense_bytes = sum(p.numel() * 4 for p in personal.parameters())
        assert stored.size_bytes < 0.5 * dense_bytes  # stored compact: kept values and 1-bit masks only
        models.append(stored.predict(x))
    # personalized: nodes trained on different data hold different models
    assert not np.allclose(models[0], models[1])


@pytest.mark.parametrize("strategy", ["fedavg", "static-synflow"])
def test_dense_and_static_mask_nodes_keep_their_trained_model(digits_settings, tmp_path, strategy, test_images):
    density = 1.0 if strategy == "fedavg" else 0.3
    settings = dataclasses.replace(digits_settings, strategy=strategy, density=density, rounds=1, num_clients=3,
                                   clients_per_round=3)
    _train(settings, tmp_path)
    for i in range(3):
        stored = load_edge_model(tmp_path / f"node-{i}" / EDGE_MODEL_NAME)
        assert (stored.strategy, stored.round, stored.personalized) == (strategy, 1, False)
        assert stored.density == pytest.approx(density, abs=0.01)
        logits = stored.predict(test_images[0])
        assert logits.shape == (40, 10) and np.isfinite(logits).all()
    sizes = load_edge_model(tmp_path / "node-0" / EDGE_MODEL_NAME).size_bytes
    if strategy == "static-synflow":
        assert sizes < 0.5 * 38_016 * 4  # kept values of the masked layers and 1-bit masks, not dense tensors
    else:
        assert sizes > 38_016 * 4


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """What `fedprune deploy certs` makes: the CA and a server certificate for localhost / 127.0.0.1."""
    return create_certificates(tmp_path_factory.mktemp("certs"), ["localhost", "127.0.0.1"], nodes=0)


@pytest.fixture
def server(hidenseek_run, certs):
    """The edge service over TLS (its default); ``server.root`` is the CA a client verifies it with."""
    served = EdgeInferenceServer(hidenseek_run[2] / "node-1", port=0, max_batch=32, max_message=64 * 1024,
                                 tls=EdgeTLS.from_files(certs.server_cert, certs.server_key)).start()
    served.root = certs.ca_cert.read_bytes()
    try:
        yield served
    finally:
        served.stop()


def test_grpc_predict_matches_the_in_process_model(server, hidenseek_run, test_images):
    settings, grid, _ = hidenseek_run
    x, y = test_images
    labels, logits, model_round = predict(server.address, x[:32], root_certificate=server.root)
    with torch.no_grad():
        reference = _personal_reference(grid, grid.node_ids[1], settings)(torch.from_numpy(x[:32])).numpy()
    assert model_round == 2
    np.testing.assert_array_equal(labels, reference.argmax(axis=1))
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)
    info = describe(server.address, root_certificate=server.root)
    assert (info.strategy, info.round, info.personalized, info.max_batch) == ("hidenseek", 2, True, 32)
    assert info.density == pytest.approx(0.3, abs=0.01) and 0 < info.size_bytes < 0.5 * 38_016 * 4
    assert info.memory_bytes > 0
    assert list(info.input_shape) == [1, 8, 8] and info.num_classes == 10


def _raw_predict(address, tensor, root_certificate=None):
    with channel(address, root_certificate) as opened:
        return pb_grpc.EdgeInferenceStub(opened).Predict(pb.PredictRequest(inputs=tensor) if tensor else
                                                         pb.PredictRequest(), timeout=10)


@pytest.mark.parametrize(("tensor", "code", "words"), [
    (None, grpc.StatusCode.INVALID_ARGUMENT, "empty request"),
    (pb.Tensor(shape=[2, 1, 8, 7], dtype="float32", data=b"\0" * 2 * 56 * 4), grpc.StatusCode.INVALID_ARGUMENT,
     "[N, 1, 8, 8]"),
    (pb.Tensor(shape=[2, 1, 8, 8], dtype="float64", data=b"\0" * 2 * 64 * 8), grpc.StatusCode.INVALID_ARGUMENT,
     "only 'float32'"),
    (pb.Tensor(shape=[2, 1, 8, 8], dtype="float32", data=b"\0" * 10), grpc.StatusCode.INVALID_ARGUMENT,
     "needs 512"),
    (pb.Tensor(shape=[0, 1, 8, 8], dtype="float32", data=b""), grpc.StatusCode.INVALID_ARGUMENT, "at least one"),
    (pb.Tensor(shape=[33, 1, 8, 8], dtype="float32", data=b"\0" * 33 * 256), grpc.StatusCode.RESOURCE_EXHAUSTED,
     "exceeds the limit of 32"),
    (pb.Tensor(shape=[2, 1, 8, 8], dtype="float32", data=np.full(128, np.nan, "<f4").tobytes()),
     grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
])
def test_malformed_requests_get_a_status_and_the_server_keeps_serving(server, test_images, tensor, code, words):
    with pytest.raises(grpc.RpcError) as caught:
        _raw_predict(server.address, tensor, root_certificate=server.root)
    assert caught.value.code() == code
    assert words in caught.value.details()
    labels, _, _ = predict(server.address, test_images[0][:4], root_certificate=server.root)
    assert labels.shape == (4,)


def test_oversized_message_is_refused_by_grpc_before_parsing(server, test_images):
    big = np.zeros((100, 1, 8, 8), "<f4")  # 25.6 KB of data, plus the message: under 64 KiB ...
    huge = pb.Tensor(shape=[100, 1, 8, 8], dtype="float32", data=b"\0" * (80 * 1024))  # ... this is over
    with pytest.raises(grpc.RpcError) as caught:
        _raw_predict(server.address, huge, root_certificate=server.root)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert big.nbytes < 64 * 1024
    assert predict(server.address, test_images[0][:2], root_certificate=server.root)[0].shape == (2,)


def test_no_model_yet_is_unavailable_then_a_new_round_is_served(tmp_path, hidenseek_run):
    served = EdgeInferenceServer(tmp_path / "empty", port=0, insecure=True).start()
    try:
        with pytest.raises(grpc.RpcError) as caught:
            describe(served.address)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no trained model yet" in caught.value.details()
        stored = load_edge_model(hidenseek_run[2] / "node-0" / EDGE_MODEL_NAME)
        from fedprune.kernels.convert import export_dense_state

        state = export_dense_state(stored.module)
        mask = {k: (v != 0).numpy() for k, v in state.items() if k.endswith("weight") and v.dim() > 1}
        for new_round in (5, 6):  # the file is replaced after every round: the server reloads it
            save_edge_model(tmp_path / "empty", state=state, mask=mask, strategy="hidenseek",
                            server_round=new_round, architecture="digits-cnn", input_shape=(1, 8, 8),
                            num_classes=10, personalized=True)
            assert describe(served.address).round == new_round
    finally:
        served.stop()


def test_fedprune_predict_command_against_the_server(server, certs, tmp_path, capsys):
    from fedprune.cli import main

    tls = ["--address", server.address, "--root-cert", str(certs.ca_cert)]
    assert main(["predict", *tls,  "--dataset", "digits", "--count", "4"]) == 0
    out = capsys.readouterr().out
    assert "model: hidenseek round 2" in out and "(personalized)" in out
    assert "predicted by the round-2 model: [" in out
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 8, 8), np.float32))  # wrong shape: one line, exit 2
    assert main(["predict", *tls,  "--npy", str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedprune predict: error: --npy: ")
    assert "(2, 3, 8, 8)" in err and "(N, 1, 8, 8)" in err
    np.save(tmp_path / "good.npy", load_dataset("digits").test.x[:3].astype(np.float64))  # any numbers, sent as float32
    assert main(["predict", *tls,  "--npy", str(tmp_path / "good.npy")]) == 0
    assert "predicted by the round-2 model: [" in capsys.readouterr().out


@pytest.mark.parametrize("content", ["missing", "pickled", "pickled-array", "npz", "text", "truncated"])
def test_fedprune_predict_refuses_a_bad_npy_file_in_one_line(tmp_path, capsys, content):
    from fedprune.cli import main

    path = tmp_path / "batch.npy"
    if content == "pickled":
        path.write_bytes(pickle.dumps({"x": 1}))
    elif content == "pickled-array":
        np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    elif content == "npz":
        with open(path, "wb") as handle:
            np.savez(handle, x=np.zeros((1, 1, 8, 8)))
    elif content == "text":
        path.write_text("1 2 3\n")
    elif content == "truncated":
        np.save(path, np.zeros((4, 1, 8, 8), np.float32))
        path.write_bytes(path.read_bytes()[:200])
    # no server runs at this address: the file is refused before anything is asked
    assert main(["predict", "--address", "127.0.0.1:9", "--npy", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("fedprune predict: error: --npy: "), err
    assert {"missing": "does not exist", "pickled": "a Python pickle", "pickled-array": "pickled Python objects",
            "npz": ".npz", "text": "no .npy file", "truncated": "not a readable .npy array"}[content] in err


def _raw_call(address, method, payload: bytes, root=None):
    """Send ``payload`` as the request bytes, unparsed: what a hostile client can put on the wire."""
    with channel(address, root) as opened:
        call = opened.unary_unary(f"/fedprune.edge.v1.EdgeInference/{method}", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        return call(payload, timeout=10)


@pytest.mark.parametrize("method", ["Predict", "Describe"])
def test_bytes_that_are_no_protobuf_message_get_invalid_argument(server, test_images, method):
    with pytest.raises(grpc.RpcError) as caught:
        _raw_call(server.address, method, b"\xff\xff\xff\xff garbage", server.root)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid fedprune.edge.v1." in caught.value.details()
    assert predict(server.address, test_images[0][:2], root_certificate=server.root)[0].shape == (2,)


def test_the_receive_limit_follows_the_served_models_input_size(hidenseek_run, test_images):
    # the default ceiling (plaintext on loopback)
    served = EdgeInferenceServer(hidenseek_run[2] / "node-1", port=0, max_batch=32, insecure=True).start()
    try:
        limit = 32 * 1 * 8 * 8 * 4 + 4096  # 32 digits inputs (1x8x8 float32) plus framing: 12 KiB, not 1.5 MiB
        request = pb.PredictRequest(inputs=pb.Tensor(shape=[2, 1, 8, 8], dtype="float32", data=b"\0" * 100_000))
        with pytest.raises(grpc.RpcError) as caught:
            _raw_call(served.address, "Predict", request.SerializeToString())
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"exceeds the {limit} bytes" in caught.value.details()
        labels, _, _ = predict(served.address, test_images[0][:32])  # a full batch still fits
        assert labels.shape == (32,)
    finally:
        served.stop()


def test_a_corrupt_replacement_model_keeps_the_last_good_one_serving(tmp_path, hidenseek_run, test_images, caplog):
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    shutil.copy(hidenseek_run[2] / "node-0" / EDGE_MODEL_NAME, model_dir / EDGE_MODEL_NAME)
    served = EdgeInferenceServer(model_dir, port=0, insecure=True).start()
    try:
        before = predict(served.address, test_images[0][:4])[1]
        for bad in (b"not a torch file", (hidenseek_run[2] / "node-0" / EDGE_MODEL_NAME).read_bytes()[:2000]):
            (tmp_path / "next.pt").write_bytes(bad)
            os.replace(tmp_path / "next.pt", model_dir / EDGE_MODEL_NAME)  # how a new round replaces it
            with caplog.at_level(logging.WARNING, logger="fedprune.edge_inference"):
                assert describe(served.address).round == 2
                labels, logits, model_round = predict(served.address, test_images[0][:4])
            assert model_round == 2 and labels.shape == (4,)
            np.testing.assert_array_equal(logits, before)
            assert "could not be loaded" in caplog.text and "still serving the round-2 model" in caplog.text
            caplog.clear()
        stored = load_edge_model(hidenseek_run[2] / "node-1" / EDGE_MODEL_NAME)
        from fedprune.kernels.convert import export_dense_state

        state = export_dense_state(stored.module)
        mask = {k: (v != 0).numpy() for k, v in state.items() if k.endswith("weight") and v.dim() > 1}
        save_edge_model(model_dir, state=state, mask=mask, strategy="hidenseek", server_round=9,
                        architecture="digits-cnn", input_shape=(1, 8, 8), num_classes=10, personalized=True)
        assert describe(served.address).round == 9  # a good file is picked up again
    finally:
        served.stop()


def test_serve_options_are_checked_before_listening(tmp_path, certs, capsys):
    from fedprune.cli import main

    plain = ["--insecure"]
    for argv, option in ((["--port", "70000"], "port"), (["--port", "-1"], "port"), (["--port", "0"], "port"),
                         (["--max-batch", "0"], "max-batch"), (["--max-batch", "-5"], "max-batch"),
                         (["--max-batch", "100000"], "max-batch"), ([], "certs"),
                         (["--certs", str(tmp_path / "none")], "certs"),
                         (["--tls-cert", str(certs.server_cert)], "certs"),
                         (["--certs", str(certs.directory), *plain], "insecure"),
                         (["--host", "0.0.0.0", *plain], "host"), (["--host", "::", *plain], "host"),
                         (["--host", "192.168.1.10", *plain], "host"), (["--host", "bad host"], "host")):
        assert main(["deploy", "serve", "--model-dir", str(tmp_path), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"fedprune deploy: error: --{option}: "), (argv, err)
        assert option != "host" or "bad host" in argv or "loopback only" in err
    with pytest.raises(ValueError, match="serves over TLS"):
        EdgeInferenceServer(tmp_path, port=0)
    with pytest.raises(ValueError, match="not a loopback address"):
        EdgeInferenceServer(tmp_path, host="0.0.0.0", port=0, insecure=True)
    with pytest.raises(ValueError, match="max_batch"):
        EdgeInferenceServer(tmp_path, port=0, max_batch=0)
    with pytest.raises(ValueError, match="port"):
        EdgeInferenceServer(tmp_path, port=70000)
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback_host(host), host
    anywhere = EdgeInferenceServer(tmp_path, host="0.0.0.0", port=0,  # over TLS any address may be served
                                   tls=EdgeTLS.from_files(certs.server_cert, certs.server_key))
    anywhere.stop(0)


def test_only_a_client_with_the_ca_gets_answers_over_tls(server, tmp_path, test_images, capsys):
    from fedprune.cli import main

    assert predict(server.address, test_images[0][:2], root_certificate=server.root)[0].shape == (2,)
    foreign = create_certificates(tmp_path / "foreign", ["localhost", "127.0.0.1"], nodes=0).ca_cert.read_bytes()
    for root in (None, foreign):  # plaintext, or TLS trusting another CA: the handshake fails, nothing is answered
        with pytest.raises(grpc.RpcError) as caught:
            predict(server.address, test_images[0][:2], timeout=5, root_certificate=root)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert main(["predict", "--address", server.address, "--dataset", "digits"]) == 2
    assert "--root-cert: give the CA" in capsys.readouterr().err

