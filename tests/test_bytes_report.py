"""Bytes per client-round each way and their share of dense FedAvg's: in results.json's summary, the round
line and ``fedprune report`` (which also compares two runs in one line)."""

import json

from fedprune.server.results import client_round_bytes, format_progress, per_client, summarize

from fedprune.cli import main as cli_main


def document(strategy: str, up: int, down: int, accuracy: float, dense: int = 1_000_000) -> dict:
    rounds = [{"round": r, "accuracy": accuracy, "loss": 1.0, "uplink_bytes": 10 * up, "downlink_bytes": 10 * down,
               "clients_sampled": 10, "clients_failed": 0, "seconds": 1.0} for r in (1, 2)]
    setup = {"uplink_bytes": 200, "downlink_bytes": 0}
    return {"config": {"strategy": strategy}, "setup": setup, "rounds": rounds,
            "summary": summarize(rounds, 1000, setup, dense)}


def test_summary_counts_discovery_and_the_dense_share():
    doc = document("hidenseek", 1_000, 9_000, 0.8)
    s = doc["summary"]
    assert s["uplink_bytes_per_client_round"] == (200 + 20 * 1_000) / 20
    assert s["downlink_bytes_per_client_round"] == 9_000
    assert s["dense_fraction"] == (1_010 + 9_000) / 2_000_000
    assert client_round_bytes(doc) == (1_010, 9_000)


def test_round_line_shows_per_client_bytes_and_the_share_of_dense():
    entry = {"round": 3, "accuracy": 0.5, "loss": 1.0, "uplink_bytes": 100_000, "downlink_bytes": 500_000,
             "clients_sampled": 10, "seconds": 2.0}
    entry |= per_client(entry, 6_000_000)
    line = format_progress(entry, 30)
    assert "per client up 9.77 KiB down 48.83 KiB" in line and "(1/200 of dense)" in line


def test_report_compares_two_runs_in_one_line(tmp_path, capsys):
    for name, doc in (("dense", document("fedavg", 1_000_000, 1_000_000, 0.82)),
                      ("sparse", document("hidenseek", 10_000, 40_000, 0.78))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(doc))
    assert cli_main(["report", str(tmp_path / "dense"), str(tmp_path / "sparse"), "--out",
                     str(tmp_path / "report.png")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert (tmp_path / "report.png").stat().st_size > 10_000
    ratio = round((1_000_010 + 1_000_000) / (10_010 + 40_000))
    assert out[-1] == (f"hidenseek (sparse): accuracy 0.7800 against fedavg (dense)'s 0.8200, moving {ratio}x "
                       "fewer bytes per client-round (both ways)")
