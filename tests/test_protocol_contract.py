"""The server/client contract (``protos.contract``) and the client's own settings (``client.settings``)."""

import dataclasses
import math

import numpy as np
import pytest
from fedprune.client.hidenseek import _checked_rule
from fedprune.client.settings import FLOAT_RANGES as CLIENT_FLOAT_RANGES
from fedprune.client.settings import ClientConfigError, ClientSettings, client_settings
from fedprune.models import build_model
from fedprune.protos.codec import DIGEST_BYTES
from fedprune.protos.contract import (
    KEPT_SUFFIX,
    STRATEGY_NAMES,
    Aggregation,
    hidenseek_setup_kind,
    initial_state,
    join_kept,
    rebuild_theta0,
    score_of_setup_kind,
    split_kept,
    theta0_digest,
)
from fedprune.pruning.budgets import ModelCost
from fedprune.pruning.schedules import data_free_mask
from fedprune.server.run_config import FLOAT_RANGES, ConfigError, RunSettings
from fedprune.strategies import STRATEGIES
from fedprune.strategies.fedtiny import FedTiny
from fedprune.strategies.hidenseek import HideNseek

BASE = {"dataset": "digits", "model": "digits-cnn", "partition": "iid", "num-clients": 10}


def test_client_settings_mirror_the_run_settings_defaults_and_ranges():
    server = {f.name: f for f in dataclasses.fields(RunSettings)}
    for field in dataclasses.fields(ClientSettings):
        assert field.name in server, field.name
        assert field.type == server[field.name].type, field.name
        assert field.default == server[field.name].default, field.name
        if field.name in FLOAT_RANGES or field.name in CLIENT_FLOAT_RANGES:
            assert CLIENT_FLOAT_RANGES[field.name] == FLOAT_RANGES[field.name], field.name
    assert ClientSettings.from_run_config(RunSettings().to_run_config()) == ClientSettings()


@pytest.mark.parametrize(("option", "value"), [
    ("lr", -0.1), ("lr", math.nan), ("lr", "fast"), ("momentum", 1.0), ("score-lr", 0.0), ("score-momentum", 1.0),
    ("moved-share", 0.0), ("alpha", 0.0), ("local-test-fraction", 1.0), ("batch-size", 0), ("local-epochs", 0),
    ("eval-batch-size", 0), ("num-clients", 0), ("batch-size", 2.5), ("seed", -1), ("seed", 2**32),
    ("min-partition-size", -1), ("classes-per-client", 11), ("dataset", "mnist"), ("model", "mlp"),
    ("partition", "random"), ("strategy", "fedprox"), ("local-loss", "focal"), ("score-optimizer", "sgd"),
    ("budget-tiers", "1-2"), ("dataset-path", "/data"),
])
def test_the_client_refuses_what_the_server_refuses(option, value):
    """Every option a client reads is refused on the node exactly when the server's settings refuse it."""
    run_config = {**BASE, option: value}
    with pytest.raises(ConfigError) as server_error:
        RunSettings.from_run_config(run_config, check_out_dir=False)
    with pytest.raises(ClientConfigError) as client_error:
        ClientSettings.from_run_config(run_config)
    assert client_error.value.option == server_error.value.option == option


def test_client_settings_are_read_once_per_run_config_and_resolve_the_local_loss():
    run_config = {**BASE, "strategy": "hidenseek", "rounds": 3}
    assert client_settings(run_config) is client_settings(dict(reversed(list(run_config.items()))))
    assert client_settings(run_config).resolved_local_loss() == "logit-adjusted"
    assert ClientSettings(strategy="fedtiny").resolved_local_loss() == "cross-entropy"
    assert ClientSettings(strategy="fedavg", local_loss="logit-adjusted").resolved_local_loss() == "logit-adjusted"


def test_a_hidenseek_client_refuses_rules_it_cannot_follow():
    adam, sgd = ClientSettings(score_optimizer="adam"), ClientSettings()
    _checked_rule(Aggregation.TALLY, "averaged", adam)
    _checked_rule(Aggregation.TERNARY_DELTA, "personal", sgd)
    for aggregation, dense, settings in (("majority", "averaged", sgd), (Aggregation.VOTE, "None", sgd),
                                         (Aggregation.TALLY, "averaged", sgd)):
        with pytest.raises(ValueError):
            _checked_rule(aggregation, dense, settings)


def test_strategy_names_are_the_ones_the_registry_builds():
    assert set(STRATEGY_NAMES) == set(STRATEGIES)


def test_one_theta0_digest_for_every_strategy_and_the_client_checks_it():
    theta0 = initial_state("digits-cnn-bn", 3, (1, 8, 8), 10)
    model = build_model("digits-cnn-bn", (1, 8, 8), 10, seed=3)
    assert set(theta0) == set(model.state_dict())
    digest = theta0_digest(theta0)
    assert len(digest) == DIGEST_BYTES  # the bytes a setup payload carries did not change
    mask = data_free_mask(model, "magnitude", 0.2, 3)
    hidenseek = HideNseek(theta0=theta0, mask=mask, architecture="digits-cnn-bn", model_seed=3, score="magnitude",
                          density=0.2, clients_per_round=2)
    fedtiny = FedTiny(theta0=theta0, candidates=[mask], cost=ModelCost.of(model, (1, 8, 8)),
                      architecture="digits-cnn-bn", model_seed=3, score="magnitude", clients_per_round=2)
    assert hidenseek.theta0_digest == fedtiny.bn_selection.theta0_digest == digest
    assert rebuild_theta0("digits-cnn-bn", 3, [1, 8, 8], 10, digest) is theta0  # rebuilt once per process
    with pytest.raises(ValueError, match="θ0 rebuilt from the seed differs"):
        rebuild_theta0("digits-cnn-bn", 4, (1, 8, 8), 10, digest)


def test_kept_values_split_and_join_back():
    rng = np.random.default_rng(0)
    state = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    mask = {"w": rng.random((3, 4)) < 0.5}
    kept = split_kept(state, mask)
    assert set(kept) == {"w" + KEPT_SUFFIX, "b"} and kept["w" + KEPT_SUFFIX].shape == (int(mask["w"].sum()),)
    joined = join_kept(kept, mask, state)
    np.testing.assert_array_equal(joined["w"], state["w"] * mask["w"])
    np.testing.assert_array_equal(joined["b"], state["b"])
    with pytest.raises(ValueError, match="kept values"):
        join_kept({**kept, "w" + KEPT_SUFFIX: kept["w" + KEPT_SUFFIX][1:]}, mask, state)


def test_a_setup_kind_names_the_score_the_node_recomputes_the_mask_with():
    for score in ("synflow", "magnitude", "random"):
        assert score_of_setup_kind(hidenseek_setup_kind(score)) == score
