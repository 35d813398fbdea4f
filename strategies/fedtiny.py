"""FedTiny: adaptive BatchNorm selection of a coarse pruned model, then progressive pruning under budgets.

How a run goes (DESIGN §1, §4):

* once, on the server, without data: θ0 from the run seed and C candidate masks
  (``pruning.candidates``: layer-wise densities perturbed around the target,
  total density exact);
* ``prepare_round`` of round 1 — adaptive BN selection, two extra exchanges with
  clients sampled for it: (1) each re-estimates BatchNorm running mean/variance of
  every candidate on its local training data (forward passes only) and uploads
  them; the server pools them (sample-weighted, variances pooled with the means);
  (2) each reports validation loss and accuracy of every candidate with the pooled
  statistics; the server installs the candidate with the lowest sample-weighted
  loss, with its pooled statistics. The weights never travel: clients rebuild θ0
  from the seed and check its digest;
* every round — sparse FedAvg over kept weights (``StaticMaskFedAvg``: kept values,
  and the coded mask whenever the mask a node holds is not the current one);
  a client whose declared memory/compute budget is below the global mask trains
  the nested submodel its budget allows (``pruning.budgets``), and kept values
  are averaged over the clients that trained them; in an adjusting round only
  clients whose budget also holds a gradient tap are asked for pairs (``gradient_tap``:
  ``dense`` — an exact accumulator the size of the adjusted layer; ``buffered`` —
  running sums at 8·K positions, formed a few rows at a time; ``auto`` — dense where
  the budget holds it, else buffered, else none);
* in every ``adjust-every``-th round up to ``adjust-until`` — progressive pruning,
  riding on training (no extra exchange): the training request names the
  layer(s) to adjust and K_t; each trainer taps the gradient a dense layer would
  have had at their pruned positions during its local steps and adds only the
  top-K magnitudes, coded as (index, value) pairs, to its update. After
  averaging the updates the server grows the K best by aggregate magnitude (new
  weights start at 0) and prunes the K smallest active weights of that layer
  (``pruning.progressive``); the next round trains the new mask.

Hostile replies in any exchange (malformed or oversized payloads, wrong shapes,
NaN statistics, more than K pairs or pairs at active positions) are dropped with the node id and
reason by the base's screening; the server never crashes on them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from fedprune.protos.codec import Decoded, Expected, Manifest, TensorSpec, decode, encode, pairs_cost, reference_digest
from fedprune.protos.contract import (
    KEPT_SUFFIX,
    THETA0_DIGEST,
    ConfigKey,
    Kind,
    MetricKey,
    Task,
    candidate_accuracy_key,
    candidate_key,
    candidate_loss_key,
    join_kept,
    split_kept,
    theta0_digest,
)
from fedprune.protos.flower_records import content_with_payload, payload_of
from fedprune.protos.wire_size import content_bytes
from fedprune.pruning import budgets, progressive
from fedprune.pruning.budgets import Budget, BudgetError, ModelCost
from fedprune.strategies.base import checked_state_arrays
from fedprune.strategies.static_mask import StaticMaskFedAvg
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid

BN_STATS = ("running_mean", "running_var")


def bn_stat_names(state: dict[str, np.ndarray]) -> list[str]:
    """Running mean/variance buffers of every BatchNorm layer in a state dict, in order."""
    return [k for k in state if k.rsplit(".", 1)[-1] in BN_STATS]


def pool_statistics(uploads: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    """Sample-weighted pooled mean and variance: Var = Σw(var + mean²)/Σw − mean_pooled² (per buffer pair)."""
    total = float(sum(weights))
    pooled: dict[str, np.ndarray] = {}
    for name in uploads[0]:
        if not name.endswith("running_mean"):
            continue
        var_name = name[: -len("running_mean")] + "running_var"
        mean = sum(w / total * u[name].astype(np.float64) for u, w in zip(uploads, weights, strict=True))
        second = sum(w / total * (u[var_name].astype(np.float64) + u[name].astype(np.float64) ** 2)
                     for u, w in zip(uploads, weights, strict=True))
        pooled[name] = mean.astype(np.float32)
        pooled[var_name] = np.maximum(second - mean ** 2, 0.0).astype(np.float32)
    return pooled


def select_candidate(losses: list[list[float]], weights: list[float]) -> tuple[int, list[float]]:
    """Index of the lowest sample-weighted mean loss (ties: lowest index) and every candidate's mean loss."""
    table = np.asarray(losses, dtype=np.float64)  # clients x candidates
    mean = (table * np.asarray(weights, dtype=np.float64)[:, None]).sum(0) / float(sum(weights))
    return int(np.argmin(mean)), [float(v) for v in mean]


def loss_margins(losses: list[list[float]], weights: list[float], chosen: int) -> list[tuple[float, float]]:
    """Each candidate's sample-weighted mean loss minus the chosen one's, paired client by client, and the
    standard error of that difference across clients (0 with one client).

    Why: at initialization every candidate's loss sits near ln(classes); a margin within about two standard
    errors means the clients' data did not tell the candidates apart, which the run report should say.
    """
    table = np.asarray(losses, dtype=np.float64)  # clients x candidates
    w = np.asarray(weights, dtype=np.float64) / float(sum(weights))
    diffs = table - table[:, [chosen]]
    mean = (diffs * w[:, None]).sum(0)
    n = table.shape[0]
    if n < 2:
        return [(float(m), 0.0) for m in mean]
    var = ((diffs - mean) ** 2 * (w ** 2)[:, None]).sum(0) * n / (n - 1)
    return [(float(m), float(np.sqrt(v))) for m, v in zip(mean, var, strict=True)]


class FedTiny(StaticMaskFedAvg):
    """FedTiny (see module docstring). Options mirror the run config (``candidates``, ``adjust-*``, budgets)."""

    def __init__(self, *, theta0: dict[str, np.ndarray], candidates: list[dict[str, np.ndarray]], cost: ModelCost,
                 architecture: str, model_seed: int, score: str, clients_per_round: int, min_train_nodes: int = 1,
                 seed: int = 0, adjust_every: int = 3, adjust_until: int = 24, adjust_alpha: float = 0.2,
                 adjust_layers: str = "output-first", gradient_tap: str = "auto",
                 eval_batch_size: int = 1000) -> None:
        if adjust_layers not in progressive.LAYER_ORDERS:
            raise ValueError(f"fedtiny adjust-layers '{adjust_layers}' is not one of {progressive.LAYER_ORDERS}")
        if gradient_tap not in progressive.GRADIENT_TAPS:
            raise ValueError(f"fedtiny gradient-tap '{gradient_tap}' is not one of {progressive.GRADIENT_TAPS}")
        super().__init__(mask=candidates[0], architecture=architecture, model_seed=model_seed, score=score,
                         clients_per_round=clients_per_round, min_train_nodes=min_train_nodes, seed=seed)
        self.theta0 = {k: np.asarray(v) for k, v in theta0.items()}
        self.theta0_digest = theta0_digest(self.theta0)
        self.candidates = [{k: np.asarray(v, dtype=bool) for k, v in c.items()} for c in candidates]
        self.cost = cost
        self.adjust_every, self.adjust_until, self.adjust_alpha = adjust_every, adjust_until, adjust_alpha
        self.adjust_layers, self.gradient_tap, self.eval_batch_size = adjust_layers, gradient_tap, eval_batch_size
        self.layer_names = list(self.mask)
        self.bn_names = bn_stat_names(self.theta0)
        self.budgets: dict[int, Budget] = {}
        self.selection: dict[str, Any] | None = None
        self.adjustments: list[dict[str, Any]] = []
        self._phase = "train"
        self.exchange_rejected: dict[int, list[tuple[int, str]]] = {}
        self._round_masks: dict[int, dict[str, np.ndarray]] = {}
        self._costs: dict[int, list[dict[str, Any]]] = {}
        self._phase_data: dict[int, Any] = {}
        self._plan: dict[str, int] = {}
        self._asked: dict[int, str] = {}  # node -> the tap it was asked to run ("dense" | "buffered")
        self._pairs: dict[int, dict[str, Any]] = {}
        self._pending_pairs: dict[int, dict[str, Any]] = {}

    def summary(self) -> None:
        """Log candidates, adjustment schedule and budgets."""
        log(INFO, "FedTiny: %d candidates from %s at density %.4f; adjust every %d rounds until %d (alpha %.2f, %s); "
            "%d nodes with budgets", len(self.candidates), self.score, self.density, self.adjust_every,
            self.adjust_until, self.adjust_alpha, self.adjust_layers,
            sum(not b.unlimited for b in self.budgets.values()))

    # -- setup hooks (called by server.runner) -----------------------------------------

    def initialize_arrays(self, arrays: ArrayRecord) -> ArrayRecord:
        """θ0 on candidate 0 (the score's own mask); BN selection may replace it in round 1."""
        return super().initialize_arrays(arrays)

    def bind_node_profiles(self, profiles: dict[int, dict[str, Any]]) -> None:
        """Read each node's declared budgets (from its QUERY reply); refuse budgets no density satisfies."""
        declared = {}
        for node, profile in profiles.items():
            budget = Budget(float(profile.get(MetricKey.MEMORY_BUDGET_MB, float("inf"))),
                            float(profile.get(MetricKey.FLOPS_BUDGET, float("inf"))))
            if not budget.unlimited:
                try:
                    budgets.ratio_for_budget(self.cost, dict.fromkeys(self.mask, 1), budget)
                except BudgetError as exc:
                    partition = profile.get(MetricKey.PARTITION_ID)
                    raise BudgetError(f"node {node} (partition {partition}): {exc}") from None
            declared[node] = budget
        self.budgets = declared

    def prepare_round(self, server_round: int, arrays: ArrayRecord, grid: Grid,
                      timeout: float | None = None) -> ArrayRecord | None:
        """The extra exchanges before round 1 trains: BN selection. Returns the arrays to train from."""
        if server_round == 1 and self.selection is None and len(self.candidates) > 1:
            arrays = self._select_by_bn(arrays, grid, timeout)
        return arrays

    # -- adaptive BN selection -----------------------------------------------------------

    def _candidate_payload(self, extra: dict[str, np.ndarray], server_round: int, kind: str) -> bytes:
        tensors: dict[str, np.ndarray] = {THETA0_DIGEST: np.frombuffer(self.theta0_digest, dtype=np.uint8)}
        for i, candidate in enumerate(self.candidates):
            tensors.update({candidate_key(i, k): v for k, v in candidate.items()})
        tensors.update(extra)
        return encode(tensors, manifest=Manifest(self.architecture, self.model_seed, self.density, server_round, kind))

    def _exchange(self, server_round: int, phase: str, messages: list[Message], grid: Grid,
                  timeout: float | None) -> list[Message]:
        """Send, screen with this phase's check, log what was dropped; valid replies sorted by partition."""
        self._phase, self._phase_data = phase, {}
        before = len(self.rejected.get(server_round, []))
        try:
            return self.screen_replies(server_round, grid.send_and_receive(messages, timeout=timeout))
        finally:
            self._phase = "train"
            # Kept apart from training rejections, so a round's clients_failed counts training only.
            dropped = self.rejected.get(server_round, [])[before:]
            del self.rejected.setdefault(server_round, [])[before:]
            self.exchange_rejected.setdefault(server_round, []).extend(dropped)

    def _select_by_bn(self, arrays: ArrayRecord, grid: Grid, timeout: float | None) -> ArrayRecord:
        nodes = self.sample_nodes(0, grid)  # "round 0": BN selection draws its own clients
        config = ConfigRecord({ConfigKey.TASK: Task.BN_STATISTICS, ConfigKey.SERVER_ROUND: 0})
        blob = self._candidate_payload({}, 0, Kind.FEDTINY_CANDIDATES)
        messages = [Message(content=content_with_payload(blob, config=config), dst_node_id=node,
                            message_type=MessageType.TRAIN) for node in nodes]
        valid = self._exchange(1, Task.BN_STATISTICS, messages, grid, timeout)
        report: dict[str, Any] = {"clients": len(nodes), "statistics_replies": len(valid),
                                  "layer_densities": [self._layer_densities(c) for c in self.candidates]}
        if not self.enough_replies(1, valid):
            report["fallback"] = "too few BN statistics replies; candidate 0 kept"
            self.selection = {**report, "selected": 0}
            return arrays
        weights = [self.weight_of(m) for m in valid]
        uploads = [self._phase_data[m.metadata.src_node_id] for m in valid]
        pooled = [pool_statistics([u[i] for u in uploads], weights) for i in range(len(self.candidates))]
        stats = {candidate_key(i, k): v for i, p in enumerate(pooled) for k, v in p.items()}
        eval_nodes = [m.metadata.src_node_id for m in valid]
        config = ConfigRecord({ConfigKey.TASK: Task.BN_EVALUATE, ConfigKey.SERVER_ROUND: 0,
                               ConfigKey.EVAL_BATCH_SIZE: self.eval_batch_size})
        blob = self._candidate_payload(stats, 0, Kind.FEDTINY_POOLED_BN)
        messages = [Message(content=content_with_payload(blob, config=config), dst_node_id=node,
                            message_type=MessageType.EVALUATE) for node in eval_nodes]
        evaluated = self._exchange(1, Task.BN_EVALUATE, messages, grid, timeout)
        report["evaluation_replies"] = len(evaluated)
        if not self.enough_replies(1, evaluated):
            report["fallback"] = "too few candidate evaluations; candidate 0 kept"
            self.selection = {**report, "selected": 0}
            return arrays
        rows = [next(iter(m.content.metric_records.values())) for m in evaluated]
        eval_weights = [self.weight_of(m) for m in evaluated]
        count = len(self.candidates)
        loss_table = [[float(r[candidate_loss_key(i)]) for i in range(count)] for r in rows]
        chosen, losses = select_candidate(loss_table, eval_weights)
        _, accuracies = select_candidate([[float(r[candidate_accuracy_key(i)]) for i in range(count)] for r in rows],
                                         eval_weights)
        margins = loss_margins(loss_table, eval_weights, chosen)
        runner_up = min((m for i, m in enumerate(margins) if i != chosen), default=None)
        distinct = runner_up is not None and runner_up[0] > 2 * runner_up[1]
        self.selection = {**report, "selected": chosen, "losses": losses, "accuracies": accuracies,
                          "loss_margins": [m for m, _ in margins], "loss_margin_stderr": [se for _, se in margins],
                          "beyond_noise": distinct}
        log(INFO, "FedTiny BN selection: candidate %d (losses %s); runner-up %s", chosen,
            [round(v, 4) for v in losses],
            "none" if runner_up is None else f"{runner_up[0]:+.4f} ± {runner_up[1]:.4f} (one standard error): "
            + ("beyond noise" if distinct else "within two standard errors, the clients' data did not separate "
               "the candidates"))
        self._install_mask(self.candidates[chosen])
        state = {k: (self.theta0[k] * self.mask[k] if k in self.mask else self.theta0[k]) for k in arrays.keys()}
        state.update(pooled[chosen])
        return ArrayRecord({k: Array(np.asarray(state[k], order="C")) for k in arrays.keys()})

    def _layer_densities(self, mask: dict[str, np.ndarray]) -> dict[str, float]:
        return {k: float(v.mean()) for k, v in mask.items()}

    def _install_mask(self, mask: dict[str, np.ndarray]) -> None:
        self.mask = {k: np.asarray(v, dtype=bool) for k, v in mask.items()}
        self.mask_digest = reference_digest(self.mask)

    def _check_bn_statistics(self, reply: Message) -> dict[int, dict[str, np.ndarray]]:
        expected = Expected({candidate_key(i, k): TensorSpec("float32", self.theta0[k].shape)
                             for i in range(len(self.candidates)) for k in self.bn_names})
        decoded = decode(payload_of(reply), expect=expected).tensors
        out: dict[int, dict[str, np.ndarray]] = {i: {} for i in range(len(self.candidates))}
        for i in range(len(self.candidates)):
            for name in self.bn_names:
                value = decoded[candidate_key(i, name)]
                if value.shape != self.theta0[name].shape or value.dtype != np.float32:
                    raise ValueError(f"'{candidate_key(i, name)}' is {value.dtype}{value.shape}, "
                                     f"expected float32{self.theta0[name].shape}")
                if not np.isfinite(value).all() or (name.endswith("running_var") and (value < 0).any()):
                    raise ValueError(f"'{candidate_key(i, name)}' holds NaN/Inf or a negative variance")
                out[i][name] = value
        return out

    def _check_bn_evaluation(self, reply: Message) -> None:
        metrics = next(iter(reply.content.metric_records.values()))
        for i in range(len(self.candidates)):
            loss, accuracy = metrics.get(candidate_loss_key(i)), metrics.get(candidate_accuracy_key(i))
            if not isinstance(loss, float) or not np.isfinite(loss) or loss < 0:
                raise ValueError(f"'{candidate_loss_key(i)}' missing or not a finite non-negative number")
            if not isinstance(accuracy, float) or not 0.0 <= accuracy <= 1.0:
                raise ValueError(f"'{candidate_accuracy_key(i)}' missing or outside [0, 1]")

    # -- progressive pruning -----------------------------------------------------------

    def adjustment_plan(self, server_round: int) -> dict[str, int]:
        """Layers adjusted after round ``server_round`` and their K_t (empty when the round adjusts nothing).

        The round's training request names them; each trainer reports its top-K pairs with its update."""
        schedule = progressive.adjustment_rounds(self.adjust_every, self.adjust_until)
        if server_round not in schedule:
            return {}
        layers = progressive.layers_to_adjust(self.layer_names, schedule.index(server_round), self.adjust_layers)
        ks = {name: progressive.cosine_k(server_round, self.adjust_until, self.adjust_alpha,
                                         int(self.mask[name].sum())) for name in layers}
        return {name: k for name, k in ks.items() if k > 0}

    def expected_reply(self, node: int) -> Expected:
        """The kept values of the node's submodel, plus top-K pairs on the planned layers if it was asked."""
        expected = super().expected_reply(node)
        asked = frozenset(self._plan) if node in self._asked else frozenset()
        return Expected(expected.tensors, expected.optional, asked)

    def model_tensors(self, server_round: int, reply: Message, blob: bytes,
                      decoded: Decoded) -> dict[str, np.ndarray]:
        """A training reply's model update; its top-K pairs (reference pairs over the node's mask) are
        checked and kept for this round."""
        if decoded.pairs:
            node = reply.metadata.src_node_id
            self._pending_pairs[node] = self._check_pairs(node, decoded.pairs, blob)
        return decoded.tensors

    def _check_pairs(self, node: int, grads: dict[str, np.ndarray], blob: bytes) -> dict[str, Any]:
        """Validate one reply's pairs: requested layers only, at most K each, magnitudes >= 0, only at positions
        the node's own mask prunes. Positions the global mask keeps (a budgeted node's submodel prunes more)
        carry no growth signal and are dropped."""
        expected = set(self._plan) if node in self._asked else set()
        if set(grads) - expected:
            raise ValueError(f"top-K pairs for {sorted(set(grads) - expected)[:3]}, requested {sorted(expected)}")
        node_mask, pairs_of, total = self.mask_for(node), {}, 0
        for name, k in self._plan.items():
            value = grads.get(name, np.zeros(self.mask[name].shape, np.float32))
            flat = value.reshape(-1)
            indices = np.flatnonzero(flat)
            if indices.size > k:
                raise ValueError(f"pairs for '{name}': {indices.size} of them, more than K = {k}")
            if (flat[indices] < 0).any():
                raise ValueError(f"pairs for '{name}' carry negative magnitudes")
            if node_mask[name].reshape(-1)[indices].any():
                raise ValueError(f"pairs for '{name}' report gradients at active positions")
            indices = indices[~self.mask[name].reshape(-1)[indices]]
            pairs_of[name] = (indices, flat[indices])
            total += int(indices.size)
        added, coded = pairs_cost(blob)
        return {"pairs_of": pairs_of, "pairs": total, "pairs_bytes": added, "coded_pairs_bytes": coded,
                "payload_bytes": len(blob)}

    def _adjust(self, server_round: int, arrays: ArrayRecord, valid: list[Message]) -> ArrayRecord:
        """Grow/prune each planned layer from the aggregated pairs of this round's valid replies."""
        entry: dict[str, Any] = {"after_round": server_round, "layers": {}, "uploads": [],
                                 "nodes_asked": len(self._asked)}
        for reply in valid:
            node = reply.metadata.src_node_id
            upload = self._pairs[node]
            entry["uploads"].append({"node_id": node, "content_bytes": content_bytes(reply),
                                     **{k: upload[k] for k in ("payload_bytes", "pairs_bytes", "coded_pairs_bytes",
                                                               "pairs")}})
        state = {k: arrays[k].numpy() for k in arrays.keys()}
        weights = [self.weight_of(m) for m in valid]
        new_mask = dict(self.mask)
        for name, k in self._plan.items():
            size = self.mask[name].size
            uploads = [self._pairs[m.metadata.src_node_id]["pairs_of"][name] for m in valid]
            score = progressive.aggregate_magnitudes(uploads, weights, size)
            weights_new, mask_new, moved = progressive.grow_and_prune(state[name], self.mask[name], score, k)
            state[name], new_mask[name] = weights_new, mask_new
            entry["layers"][name] = {"k": k, "grown": int(moved.grown.size), "pruned": int(moved.pruned.size),
                                     "active": int(mask_new.sum()), "size": int(size),
                                     "candidates_reported": int((score > 0).sum())}
        self._install_mask(new_mask)
        self.adjustments.append(entry)
        log(INFO, "FedTiny adjustment after round %d: %s", server_round,
            {n: (v["grown"], v["pruned"]) for n, v in entry["layers"].items()})
        return ArrayRecord({k: Array(np.asarray(state[k], order="C")) for k in arrays.keys()})

    # -- training with budgets ------------------------------------------------------------

    def _kept_counts(self, node: int) -> dict[str, int]:
        """Per layer, how many weights the node's submodel keeps."""
        return {n: int(m.sum()) for n, m in self.mask_for(node).items()}

    def _ratio(self, node: int) -> float:
        budget = self.budgets.get(node)
        if budget is None or budget.unlimited:
            return 1.0
        return budgets.ratio_for_budget(self.cost, {n: int(m.sum()) for n, m in self.mask.items()}, budget)

    def mask_for(self, node: int) -> dict[str, np.ndarray]:
        """The global mask, or the nested submodel the node's budget allows (largest global magnitudes)."""
        if node not in self._round_masks:
            ratio = self._ratio(node)
            self._round_masks[node] = (self.mask if ratio >= 1.0
                                       else budgets.nested_submask(self.mask, self._template, ratio))
        return self._round_masks[node]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sparse FedAvg messages (``StaticMaskFedAvg``), each node on the submodel its budget allows."""
        self._round_masks, self._pairs, self._pending_pairs, self._asked = {}, {}, {}, {}
        self._plan = self.adjustment_plan(server_round)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        rows = []
        for message in messages:
            node = message.metadata.dst_node_id
            kept = self._kept_counts(node)
            budget = self.budgets.get(node, Budget())
            tap = list(self._plan) if node in self._asked else []
            capacities = self._capacities() if self._asked.get(node) == "buffered" else None
            rows.append({"node_id": node, "partition_id": self.node_partitions.get(node),
                         "density": sum(kept.values()) / sum(m.size for m in self.mask.values()),
                         "est_param_memory_bytes": self.cost.memory_bytes(kept),
                         "est_flops_per_sample": self.cost.flops_per_sample(kept),
                         "reports_pairs": bool(tap), "gradient_tap": self._asked.get(node),
                         "est_tap_memory_bytes": self.cost.tap_memory_bytes(tap, capacities),
                         "est_tap_flops_per_sample": self.cost.tap_flops_per_sample(tap),
                         "memory_budget_mb": None if np.isinf(budget.memory_mb) else budget.memory_mb,
                         "flops_budget": None if np.isinf(budget.flops_per_sample) else budget.flops_per_sample})
        self._costs[server_round] = rows
        return messages

    def node_config(self, node: int, config: ConfigRecord) -> ConfigRecord:
        """In an adjusting round, ask for top-K pairs every node whose budget also holds a gradient tap (the
        dense one, or with ``gradient_tap`` auto/buffered the buffered one); a node it would overrun trains
        without it."""
        if not self._plan:
            return config
        tap = self._tap_for(node)
        if tap is None:
            return config
        self._asked[node] = tap
        extra: dict[str, Any] = {ConfigKey.ADJUST_LAYERS: list(self._plan),
                                 ConfigKey.ADJUST_K: [int(k) for k in self._plan.values()]}
        if tap == "buffered":
            extra[ConfigKey.ADJUST_BUFFER] = [self._capacities()[name] for name in self._plan]
        return ConfigRecord({**dict(config), **extra})

    def _capacities(self) -> dict[str, int]:
        """Buffered-tap capacity per adjusted layer this round (8·K, at most the layer's size)."""
        return {name: progressive.tap_buffer_capacity(k, self.mask[name].size) for name, k in self._plan.items()}

    def _tap_for(self, node: int) -> str | None:
        """The tap a node runs this round: the configured one if its budget holds it (auto: dense first)."""
        budget, layers, kept = self.budgets.get(node, Budget()), list(self._plan), self._kept_counts(node)
        choices = {"auto": ("dense", "buffered"), "dense": ("dense",), "buffered": ("buffered",)}[self.gradient_tap]
        for tap in choices:
            capacities = self._capacities() if tap == "buffered" else None
            if budget.unlimited or budgets.fits_budget(self.cost, kept, budget, layers, capacities):
                return tap
        return None

    def check_reply(self, server_round: int, reply: Message) -> str | None:
        """Training replies as in ``StaticMaskFedAvg``; setup/adjustment replies by their own checks."""
        if self._phase == "train":
            reason = super().check_reply(server_round, reply)
            pairs = self._pending_pairs.pop(reply.metadata.src_node_id, None)
            if reason is None and pairs is not None:  # a valid update without pairs only gives no growth signal
                self._pairs[reply.metadata.src_node_id] = pairs
            return reason
        reason = super(StaticMaskFedAvg, self).check_reply(server_round, reply)
        if reason:
            return reason
        node = reply.metadata.src_node_id
        try:
            if self._phase == Task.BN_STATISTICS:
                self._phase_data[node] = self._check_bn_statistics(reply)
            else:
                self._check_bn_evaluation(reply)
        except ValueError as exc:  # WireFormatError is a ValueError
            return f"{self._phase} payload rejected: {exc}"
        return None

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sparse FedAvg of the round's updates; in a round with an adjustment plan, then the grow/prune
        step from the top-K pairs that rode on the valid updates (the new mask trains from the next round)."""
        replies = list(replies)
        arrays, metrics = self._average_kept(server_round, replies)
        if arrays is None or not self._plan:
            return arrays, metrics
        reporting = sorted((m for m in replies if m.metadata.src_node_id in self._pairs), key=self.partition_order)
        if not reporting:
            self.adjustments.append({"after_round": server_round, "layers": {},
                                     "uploads": [], "nodes_asked": len(self._asked),
                                     "skipped": "no valid top-K pairs"})
            return arrays, metrics
        return self._adjust(server_round, arrays, reporting), metrics

    def _average_kept(self, server_round: int,
                      replies: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Plain sparse FedAvg when everyone trained the global mask; else kept values averaged over the
        clients whose submodel holds them (a weight no client trained keeps its global value)."""
        if all(m is self.mask for m in self._round_masks.values()):
            return super().aggregate_train(server_round, replies)
        self._decoded = {}
        valid = self.screen_replies(server_round, replies)
        if not self.enough_replies(server_round, valid):
            return None, None
        weights = [self.weight_of(m) for m in valid]
        global_kept = split_kept(self._template, self.mask)
        sums = {k: np.zeros(v.shape, np.float64) for k, v in global_kept.items()}
        cover = {k: np.zeros(v.shape, np.float64) for k, v in global_kept.items()}
        for reply, weight in zip(valid, weights, strict=True):
            node = reply.metadata.src_node_id
            mask, tensors = self.mask_for(node), self._decoded[node]
            for name in global_kept:
                if name.endswith(KEPT_SUFFIX):
                    layer = name[: -len(KEPT_SUFFIX)]
                    where = mask[layer].reshape(-1)[self.mask[layer].reshape(-1)]
                    sums[name][where] += weight * tensors[name]
                    cover[name][where] += weight
                else:
                    sums[name] += weight * tensors[name].astype(np.float64)
                    cover[name] += weight
        mean = {k: np.where(cover[k] > 0, sums[k] / np.maximum(cover[k], 1e-300), global_kept[k]).astype(
            global_kept[k].dtype) for k in global_kept}
        joined = join_kept(mean, self.mask, self._template)
        losses = [float(next(iter(m.content.metric_records.values())).get(MetricKey.TRAIN_LOSS, 0.0))
                  for m in valid]
        self._decoded = {}
        return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in joined.items()}), MetricRecord(
            {MetricKey.TRAIN_LOSS: float(np.average(losses, weights=weights)),
             MetricKey.NUM_EXAMPLES: int(sum(weights))})

    # -- state and reports -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The current mask, the selection and every adjustment so far (a resumed run continues from them)."""
        return {**super().state_dict(), "mask": self.mask, "selection": self.selection,
                "adjustments": json.loads(json.dumps(self.adjustments))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the mask and history; every node gets the mask again after a restart."""
        super().load_state_dict(state)
        self._install_mask(checked_state_arrays("mask", state.get("mask"), self.mask, np.bool_))
        self.selection, self.adjustments = state.get("selection"), list(state.get("adjustments", []))
        self.delivery.forget_all()

    def round_report(self, server_round: int) -> dict[str, Any]:
        """Adds density, the BN selection (round 1), this round's adjustment, and each client's estimated cost."""
        report = {**super().round_report(server_round), "strategy": "fedtiny",
                  "layer_densities": self._layer_densities(self.mask),
                  "client_costs": self._costs.pop(server_round, []),
                  "exchange_rejected_replies": [{"node_id": node, "reason": reason}
                                                for node, reason in self.exchange_rejected.get(server_round, [])]}
        if server_round == 1 and self.selection is not None:
            report["bn_selection"] = self.selection
        adjustment = next((a for a in self.adjustments if a["after_round"] == server_round), None)
        if adjustment is not None:
            report["adjustment"] = adjustment
        return report

    def run_report(self) -> dict[str, Any]:
        """Run-level FedTiny figures for ``results.json``: selection, candidates' losses, adjustment counts."""
        return {"selected_candidate": None if self.selection is None else self.selection.get("selected"),
                "candidate_losses": None if self.selection is None else self.selection.get("losses"),
                "candidate_accuracies": None if self.selection is None else self.selection.get("accuracies"),
                "selection_beyond_noise": None if self.selection is None else self.selection.get("beyond_noise"),
                "adjustments": [{"after_round": a["after_round"], "skipped": a.get("skipped"),
                                 "layers": a["layers"]} for a in self.adjustments],
                "budgeted_nodes": sum(not b.unlimited for b in self.budgets.values())}

