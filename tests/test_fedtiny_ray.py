"""FedTiny through a real SuperLink + Ray: BN selection, one mask adjustment, 3 rounds on digits."""

import pytest
from fedprune.server.results import validate_results
from fedprune.server.run_config import RunSettings
from fedprune.simulation.launcher import run_simulation

pytestmark = pytest.mark.slow


def test_fedtiny_ray_simulation_3_rounds_with_bn_selection_and_one_adjustment(tmp_path):
    settings = RunSettings(strategy="fedtiny", dataset="digits", model="digits-cnn-bn", partition="iid",
                           num_clients=10, clients_per_round=4, rounds=3, density=0.2, score="magnitude",
                           candidates=3, adjust_every=2, adjust_until=3, budget_tiers="inf:inf,0.05:inf",
                           out=str(tmp_path / "fedtiny"))
    document = run_simulation(settings, progress=lambda _: None)
    validate_results(document)
    assert document["status"] == "completed" and document["config"]["strategy"] == "fedtiny"
    rounds = document["rounds"]
    assert all(r["clients_failed"] == 0 and r["aggregated"] for r in rounds)
    selection = rounds[0]["bn_selection"]
    assert selection["evaluation_replies"] == 4 and len(selection["losses"]) == 3
    lowest = min(range(3), key=selection["losses"].__getitem__)
    assert selection["lowest_loss"] == lowest and selection["evidence_z"] == 2.0  # the default gate
    lead, stderr = selection["loss_margins"][0], selection["loss_margin_stderr"][0]  # candidate 0 behind lowest
    assert selection["selected"] == (lowest if lowest == 0 or lead > 2 * stderr else 0)
    report = document["strategy_report"]
    assert report["selected_candidate"] == selection["selected"] and report["budgeted_nodes"] == 5
    (adjustment,) = [r["adjustment"] for r in rounds if "adjustment" in r]
    assert adjustment["after_round"] == 2  # pairs ride on round 2's training replies
    (layer,) = adjustment["layers"].values()
    assert 0 < layer["grown"] == layer["pruned"] <= layer["k"]
    asked = [c for c in rounds[1]["client_costs"] if c["reports_pairs"]]
    assert asked and {u["node_id"] for u in adjustment["uploads"]} == {c["node_id"] for c in asked}
    assert any(not c["reports_pairs"] for c in rounds[1]["client_costs"] if c["partition_id"] % 2)
    for c in rounds[1]["client_costs"]:  # a 0.05 MB node cannot also hold the tap's dense accumulator
        if c["partition_id"] % 2:
            assert not c["reports_pairs"] or c["est_param_memory_bytes"] + c["est_tap_memory_bytes"] <= 0.05e6
    for r in rounds:  # budget-limited partitions (odd ids) train a smaller submodel
        costs = {c["partition_id"]: c for c in r["client_costs"]}
        assert all(c["est_param_memory_bytes"] <= 0.05e6 for pid, c in costs.items() if pid % 2)
        assert all(c["density"] == pytest.approx(0.2, abs=1e-3) for pid, c in costs.items() if pid % 2 == 0)
