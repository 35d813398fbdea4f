"""Tile-granularity masks (``--mask-granularity tile32``): whole 32×32 tiles, exact density in tiles, and runs.

Also: the dispatcher never picks a GPU-only backend on the CPU, and the device option resolves to the CPU
on a host without CUDA (what keeps CPU runs bit-identical).
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
from fedprune.client.app import app as client_app
from fedprune.kernels.dispatch import Backend, choose_backend
from fedprune.models import build_model
from fedprune.models.device import DeviceError, device_of, on_device, resolve_device
from fedprune.pruning.schedules import data_free_mask
from fedprune.pruning.scores import SCORES
from fedprune.pruning.tile_masks import (
    TILE,
    expand_tiles,
    keep_rule,
    kept_tile_fraction,
    tile_grid,
    tile_scores,
    tile_topk_mask,
)
from fedprune.server.results import validate_results
from fedprune.server.runner import run_federation

from tests.inprocess_grid import InProcessGrid


def _tiles(mask: np.ndarray) -> np.ndarray:
    """Per tile of ``mask``'s GEMM view: how many weights it keeps."""
    return tile_scores({"m": torch.from_numpy(mask.astype(np.float64))})["m"].numpy()


def _tile_sizes(shape: tuple[int, ...]) -> np.ndarray:
    return _tiles(np.ones(shape, dtype=bool))


@pytest.mark.parametrize("score", ["magnitude", "synflow"])
@pytest.mark.parametrize("density", [0.1, 0.01])
def test_tile_masks_keep_whole_tiles_at_the_exact_tile_density(score, density):
    model = build_model("fl-cnn", (1, 28, 28), seed=3)
    mask = data_free_mask(model, score, density, seed=3, granularity="tile32")
    total = sum(math.prod(tile_grid(m.shape)) for m in mask.values())
    kept_tiles = 0
    for name, layer in mask.items():
        per_tile, sizes = _tiles(layer), _tile_sizes(layer.shape)
        assert np.all((per_tile == 0) | (per_tile == sizes)), f"{name}: a tile is only partly kept"
        assert per_tile.any(), f"{name}: every layer keeps at least one tile"
        kept_tiles += int((per_tile > 0).sum())
    assert kept_tiles == max(len(mask), round(density * total))
    again = data_free_mask(build_model("fl-cnn", (1, 28, 28), seed=3), score, density, seed=3, granularity="tile32")
    assert all(np.array_equal(mask[k], again[k]) for k in mask)  # deterministic


def test_a_tile_scores_the_sum_of_its_weights_and_the_best_tiles_win():
    scores = {"w": torch.zeros(64, 96, dtype=torch.float64)}
    scores["w"][32:64, 0:32] = 1.0  # tile (1, 0): sum 1024
    scores["w"][0, 64] = 500.0  # tile (0, 2): one large weight, sum 500
    summed = tile_scores(scores)["w"]
    assert summed.shape == (2, 3) and summed[1, 0] == 1024 and summed[0, 2] == 500
    mask = tile_topk_mask(scores, 1 / 6)["w"]  # one tile of six
    assert mask[32:64, 0:32].all() and mask.sum() == TILE * TILE


def test_edge_tiles_and_conv_weights_follow_the_gemm_view():
    conv = np.zeros((40, 3, 5, 5), dtype=bool)  # GEMM view 40 x 75: tiles 2 x 3, the edges 8 rows / 11 columns
    assert tile_grid(conv.shape) == (2, 3)
    kept = np.array([[False, False, True], [True, False, False]])
    mask = expand_tiles(kept, conv.shape)
    view = mask.reshape(40, 75)
    assert view[:32, 64:].all() and view[32:, :32].all() and view.sum() == 32 * 11 + 8 * 32
    assert kept_tile_fraction({"c": mask}) == pytest.approx(2 / 6)


def test_keep_rule_names_the_granularities():
    assert keep_rule("weight") is not keep_rule("tile32")
    with pytest.raises(ValueError, match="tile64"):
        keep_rule("tile64")
    scores = SCORES["magnitude"](build_model("digits-cnn", (1, 8, 8), seed=0), 0)
    weight_mask = keep_rule("weight")(scores, 0.3)
    assert sum(int(m.sum()) for m in weight_mask.values()) == round(0.3 * sum(s.numel() for s in scores.values()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts what a host without a GPU answers")
def test_on_a_cpu_host_auto_is_the_cpu_and_cuda_is_refused():
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="one of"):
        resolve_device("gpu")
    model = torch.nn.Linear(3, 2)
    with on_device(model, resolve_device("auto")) as same:
        assert same is model and device_of(model).type == "cpu"


@pytest.mark.parametrize("density", [0.01, 0.05, 0.1])
def test_the_dispatcher_never_picks_a_gpu_backend_on_the_cpu(density):
    model = build_model("fl-cnn", (1, 28, 28), seed=0)
    for granularity in ("weight", "tile32"):
        mask = data_free_mask(model, "magnitude", density, granularity=granularity)
        for layer in mask.values():
            for batch in (1, 32, 256):
                for training in (False, True):
                    chosen = choose_backend(torch.from_numpy(layer), batch=batch, training=training, device="cpu")
                    assert chosen != Backend.BLOCKSPARSE
    big_tiles = torch.from_numpy(tile_topk_mask({"w": torch.rand(4096, 4096, dtype=torch.float64)}, 0.05)["w"])
    assert choose_backend(big_tiles, batch=2048, training=True, device="cpu") != Backend.BLOCKSPARSE
    assert choose_backend(big_tiles, batch=2048, training=True, device="cuda") == Backend.BLOCKSPARSE


@pytest.mark.parametrize("strategy", ["static-synflow", "hidenseek"])
def test_a_tile32_run_completes_on_the_cpu(digits_settings, strategy):
    settings = dataclasses.replace(digits_settings, strategy=strategy, density=0.3, mask_granularity="tile32",
                                   personal_eval_every=0)
    settings.validate()
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config())
    document = run_federation(grid, settings, progress=lambda line: None)
    validate_results(document)
    assert document["status"] == "completed" and len(document["rounds"]) == settings.rounds
    assert all(r["clients_failed"] == 0 and r["aggregated"] for r in document["rounds"])
