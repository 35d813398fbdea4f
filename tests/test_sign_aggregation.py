"""HideNseek's aggregation rule objects: one per ``--aggregation`` value, the same object on both sides."""

import numpy as np
import pytest
from fedprune.protos.codec import WireFormatError, decode, encode
from fedprune.protos.contract import AGGREGATIONS, SCORE_DOWNLINK, SCORES, SIGMA, MetricKey
from fedprune.pruning.sign_aggregation import (
    SIGN_RULES,
    ClientRound,
    ServerStep,
    SignState,
    Upload,
    sign_rule,
)

REACH = 0.05


def _world(seed=0):
    rng = np.random.default_rng(seed)
    magnitude = {"b": rng.random(30).astype(np.float32), "a": rng.random(50).astype(np.float32)}
    sigma = {k: np.where(rng.random(v.shape) < 0.5, 1, -1).astype(np.int8) for k, v in magnitude.items()}
    tally = {k: (magnitude[k] * sigma[k]).astype(np.float32) for k in magnitude}
    return rng, magnitude, sigma, tally


def _client_upload(rule, rng, magnitude, sigma, tally, partition_id=0):
    received = {SIGMA + k: v for k, v in sigma.items()} | rule.downlink(tally)
    round_ = ClientRound(sigma=sigma, magnitude=magnitude, received=received, reach=REACH, seed=1, server_round=2,
                         partition_id=partition_id, moved_share=0.5, slot=partition_id, slots=2)
    start = rule.start(round_)
    scores = {k: (v + rng.uniform(-REACH, REACH, v.shape)).astype(np.float32) for k, v in start.items()}
    return scores, rule.upload(scores, start, round_)


def test_one_rule_per_aggregation_name_and_the_contract_agrees():
    assert set(SIGN_RULES) == set(AGGREGATIONS)
    assert {name for name, rule in SIGN_RULES.items() if rule.score_downlink} == set(SCORE_DOWNLINK)
    assert all(sign_rule(name).name == name for name in AGGREGATIONS)
    with pytest.raises(ValueError, match="not one of"):
        sign_rule("majority")
    sign_rule("tally").check_client("adam")
    with pytest.raises(ValueError, match="aggregation 'tally' bounds"):
        sign_rule("tally").check_client("layer-sgd")
    for name in ("vote", "score-average", "ternary-delta"):
        sign_rule(name).check_client("layer-sgd")


@pytest.mark.parametrize("name", AGGREGATIONS)
def test_a_client_upload_passes_the_server_check_and_aggregates(name):
    rule = sign_rule(name)
    rng, magnitude, sigma, tally = _world()
    reference = {SIGMA + k: v for k, v in sigma.items()}
    uploads = []
    for partition in (0, 1):
        scores, upload = _client_upload(rule, rng, magnitude, sigma, tally, partition)
        decoded = decode(encode(upload, reference=reference), reference=reference,
                         expect=rule.expected_upload(magnitude)).tensors
        rule.check_upload(decoded, magnitude, {MetricKey.TALLY_REACH: REACH})
        uploads.append(Upload(decoded, 1.0 + partition, {MetricKey.TALLY_REACH: REACH}))
    velocity = {k: np.zeros(v.shape, np.float32) for k, v in magnitude.items()}
    state = rule.aggregate(SignState(sigma, tally, velocity, magnitude), uploads, ServerStep())
    for k, kept in magnitude.items():
        assert state.sigma[k].dtype == np.int8 and state.sigma[k].shape == kept.shape
        assert np.isin(state.sigma[k], (-1, 1)).all()
        assert state.tally[k].dtype == np.float32 and state.velocity[k].shape == kept.shape
    assert list(state.sigma) == list(magnitude)  # layer order kept: it fixes the bytes of the next σ
    if name == "vote":  # only σ moves
        assert state.tally is tally and state.velocity is velocity
    if name == "score-average":  # lr 1, no momentum: the weighted mean of the clients' scores
        mean = {k: (uploads[0].tensors[SCORES + k] + 2.0 * uploads[1].tensors[SCORES + k]) / 3.0 for k in magnitude}
        assert all(np.allclose(state.tally[k], mean[k], atol=1e-6) for k in magnitude)


@pytest.mark.parametrize("name", AGGREGATIONS)
def test_the_server_check_refuses_a_missing_layer(name):
    rule = sign_rule(name)
    rng, magnitude, sigma, tally = _world()
    _, upload = _client_upload(rule, rng, magnitude, sigma, tally)
    reference = {SIGMA + k: v for k, v in sigma.items()}
    dropped = next(key for key in upload if key.endswith("/a"))
    partial = {k: v for k, v in upload.items() if k != dropped}
    with pytest.raises(WireFormatError, match="lacks expected tensors"):
        decode(encode(partial, reference=reference), reference=reference, expect=rule.expected_upload(magnitude))
    with pytest.raises(ValueError, match="missing"):
        rule.check_upload(partial, magnitude, {MetricKey.TALLY_REACH: REACH})


def test_tally_needs_the_clients_reach():
    rule = sign_rule("tally")
    rng, magnitude, sigma, tally = _world()
    _, upload = _client_upload(rule, rng, magnitude, sigma, tally)
    for metrics in ({}, {MetricKey.TALLY_REACH: -1.0}, {MetricKey.TALLY_REACH: 1}):
        with pytest.raises(ValueError, match="tally-reach"):
            rule.check_upload(upload, magnitude, metrics)
