"""FedTiny's adaptive BatchNorm selection: the two exchanges before round 1 trains, and their screening.

1. Clients sampled for it ("round 0" of the seeded sampling) re-estimate BatchNorm running mean/variance of
   every candidate mask on their local training data (forward passes only) and upload them; the server
   pools them (sample-weighted, variances pooled with the means: ``pruning.candidates.pool_statistics``).
2. The clients whose statistics were valid report validation loss and accuracy of every candidate with the
   pooled statistics; the candidate with the lowest sample-weighted loss wins
   (``pruning.candidates.select_candidate``) and the global model becomes θ0 on its mask with its pooled
   statistics. The weights never travel: clients rebuild θ0 from the seed and check its digest.

Each exchange screens its replies with its own check (``FederatedStrategy.screen_replies`` with ``check``):
NaN, negative or misshapen statistics, and losses or accuracies out of range, are dropped with the node id
and reason, recorded apart from training rejections (``rejected``) so a round's ``clients_failed`` counts
training only. Too few valid replies in either exchange keep candidate 0 (``fallback`` in the report).
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO
from typing import Any

import numpy as np
from fedprune.protos.codec import Expected, Manifest, TensorSpec, decode, encode
from fedprune.protos.contract import (
    THETA0_DIGEST,
    ConfigKey,
    Kind,
    Task,
    candidate_accuracy_key,
    candidate_key,
    candidate_loss_key,
    theta0_digest,
)
from fedprune.protos.flower_records import content_with_payload, payload_of
from fedprune.pruning.candidates import (
    bn_stat_names,
    loss_margins,
    pool_statistics,
    select_candidate,
    select_with_evidence,
)
from fedprune.strategies.base import FederatedStrategy, ReplyRejected, Screened, reply_metrics
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid

Statistics = dict[int, dict[str, np.ndarray]]  # candidate index -> BatchNorm buffer -> values


def layer_densities(mask: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of kept weights per layer of ``mask`` (what the reports show of a mask)."""
    return {k: float(v.mean()) for k, v in mask.items()}


class BnSelection:
    """The BN-selection exchanges of one run (see module docstring); ``select`` runs them once.

    Parameters
    ----------
    theta0 : dict[str, np.ndarray]
        The seeded initial model (clients rebuild it; its digest travels).
    candidates : list[dict[str, np.ndarray]]
        The candidate masks (``pruning.candidates.candidate_masks``); candidate 0 is the fallback.
    architecture, model_seed, density : str, int, float
        What every payload's manifest names.
    eval_batch_size : int
        Batch size clients evaluate candidates with.
    evidence_z : float
        A candidate other than 0 is installed only if it beats candidate 0's loss by more than this many
        standard errors (``pruning.candidates.select_with_evidence``); 0: the lowest loss wins.
    """

    def __init__(self, *, theta0: dict[str, np.ndarray], candidates: list[dict[str, np.ndarray]], architecture: str,
                 model_seed: int, density: float, eval_batch_size: int = 1000, evidence_z: float = 0.0) -> None:
        self.theta0 = {k: np.asarray(v) for k, v in theta0.items()}
        self.theta0_digest = theta0_digest(self.theta0)
        self.candidates = [{k: np.asarray(v, dtype=bool) for k, v in c.items()} for c in candidates]
        self.bn_names = bn_stat_names(self.theta0)
        self.architecture, self.model_seed, self.density = architecture, model_seed, density
        self.eval_batch_size, self.evidence_z = eval_batch_size, evidence_z
        self.rejected: list[tuple[int, str]] = []  # (node, reason) of replies its exchanges dropped

    def select(self, host: FederatedStrategy, arrays: ArrayRecord, grid: Grid,
               timeout: float | None) -> tuple[ArrayRecord, dict[str, Any]]:
        """Run both exchanges on ``grid`` for ``host`` (its sampling, screening and weights); return the arrays
        to train round 1 from and the selection report (``selected``: the winning candidate's index)."""
        nodes = host.sample_nodes(0, grid)  # "round 0": BN selection draws its own clients
        config = ConfigRecord({ConfigKey.TASK: Task.BN_STATISTICS, ConfigKey.SERVER_ROUND: 0})
        valid = self._exchange(host, nodes, MessageType.TRAIN, self._payload({}, Kind.FEDTINY_CANDIDATES), config,
                               grid, timeout, self._check(host, Task.BN_STATISTICS, self._statistics_of))
        report: dict[str, Any] = {"clients": len(nodes), "statistics_replies": len(valid),
                                  "layer_densities": [layer_densities(c) for c in self.candidates]}
        if not host.enough_replies(1, valid):
            return arrays, {**report, "fallback": "too few BN statistics replies; candidate 0 kept", "selected": 0}
        weights = [host.weight_of(s.reply) for s in valid]
        pooled = [pool_statistics([s.decoded[i] for s in valid], weights) for i in range(len(self.candidates))]
        stats = {candidate_key(i, k): v for i, p in enumerate(pooled) for k, v in p.items()}
        config = ConfigRecord({ConfigKey.TASK: Task.BN_EVALUATE, ConfigKey.SERVER_ROUND: 0,
                               ConfigKey.EVAL_BATCH_SIZE: self.eval_batch_size})
        evaluated = self._exchange(host, [s.node for s in valid], MessageType.EVALUATE,
                                   self._payload(stats, Kind.FEDTINY_POOLED_BN), config, grid, timeout,
                                   self._check(host, Task.BN_EVALUATE, self._evaluation_of))
        report["evaluation_replies"] = len(evaluated)
        if not host.enough_replies(1, evaluated):
            return arrays, {**report, "fallback": "too few candidate evaluations; candidate 0 kept", "selected": 0}
        selection = {**report, **self._choose([s.decoded for s in evaluated],
                                              [host.weight_of(s.reply) for s in evaluated])}
        chosen = self.candidates[selection["selected"]]
        state = {k: (self.theta0[k] * chosen[k] if k in chosen else self.theta0[k]) for k in arrays.keys()}
        state.update(pooled[selection["selected"]])
        return ArrayRecord({k: Array(np.asarray(state[k], order="C")) for k in arrays.keys()}), selection

    def _choose(self, rows: list[MetricRecord], weights: list[float]) -> dict[str, Any]:
        """The candidate to install (the lowest sample-weighted loss, or candidate 0 where that lead is within
        ``evidence_z`` standard errors), every candidate's loss and accuracy, and how far each is behind the
        lowest (paired margins and their standard errors)."""
        count = len(self.candidates)
        loss_table = [[float(r[candidate_loss_key(i)]) for i in range(count)] for r in rows]
        _, losses = select_candidate(loss_table, weights)
        chosen, lowest = select_with_evidence(loss_table, weights, self.evidence_z)
        _, accuracies = select_candidate([[float(r[candidate_accuracy_key(i)]) for i in range(count)] for r in rows],
                                         weights)
        margins = loss_margins(loss_table, weights, lowest)
        runner_up = min((m for i, m in enumerate(margins) if i != lowest), default=None)
        distinct = runner_up is not None and runner_up[0] > 2 * runner_up[1]
        kept = chosen != lowest  # the lowest loss did not beat candidate 0 by evidence_z standard errors
        log(INFO, "FedTiny BN selection: candidate %d (losses %s)%s; runner-up %s", chosen,
            [round(v, 4) for v in losses],
            f"; candidate {lowest}'s lower loss is within {self.evidence_z:g} standard errors of candidate 0's, "
            "so candidate 0 stays" if kept else "",
            "none" if runner_up is None else f"{runner_up[0]:+.4f} ± {runner_up[1]:.4f} (one standard error): "
            + ("beyond noise" if distinct else "within two standard errors, the clients' data did not separate "
               "the candidates"))
        return {"selected": chosen, "lowest_loss": lowest, "evidence_z": self.evidence_z, "losses": losses,
                "accuracies": accuracies, "loss_margins": [m for m, _ in margins],
                "loss_margin_stderr": [se for _, se in margins], "beyond_noise": distinct}

    # -- the exchanges and their screening ------------------------------------------------------------------

    def _payload(self, extra: dict[str, np.ndarray], kind: str) -> bytes:
        """θ0's digest, every candidate mask, and ``extra`` (the pooled statistics), coded."""
        tensors: dict[str, np.ndarray] = {THETA0_DIGEST: np.frombuffer(self.theta0_digest, dtype=np.uint8)}
        for i, candidate in enumerate(self.candidates):
            tensors.update({candidate_key(i, k): v for k, v in candidate.items()})
        tensors.update(extra)
        return encode(tensors, manifest=Manifest(self.architecture, self.model_seed, self.density, 0, kind))

    def _exchange(self, host: FederatedStrategy, nodes: list[int], message_type: str, blob: bytes,
                  config: ConfigRecord, grid: Grid, timeout: float | None,
                  check: Callable[[int, Message], Any]) -> list[Screened[Any]]:
        """Send ``blob`` to ``nodes``; the replies ``check`` accepts, sorted by partition (drops recorded here)."""
        messages = [Message(content=content_with_payload(blob, config=config), dst_node_id=node,
                            message_type=message_type) for node in nodes]
        return host.screen_replies(1, grid.send_and_receive(messages, timeout=timeout), check, rejected=self.rejected)

    @staticmethod
    def _check(host: FederatedStrategy, task: str, read: Callable[[Message], Any]) -> Callable[[int, Message], Any]:
        """The check of one exchange: the host's metric check, then ``read`` (``ValueError``: rejected, the
        reason prefixed by the task)."""
        def check(server_round: int, reply: Message) -> Any:
            host.check_metrics(reply)
            try:
                return read(reply)
            except ValueError as exc:  # WireFormatError is a ValueError
                raise ReplyRejected(f"{task} payload rejected: {exc}") from None
        return check

    def _statistics_of(self, reply: Message) -> Statistics:
        """Every candidate's re-estimated BatchNorm statistics, float32 of θ0's shapes, finite, variances >= 0."""
        expected = Expected({candidate_key(i, k): TensorSpec("float32", self.theta0[k].shape)
                             for i in range(len(self.candidates)) for k in self.bn_names})
        decoded = decode(payload_of(reply), expect=expected).tensors
        out: Statistics = {i: {} for i in range(len(self.candidates))}
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

    def _evaluation_of(self, reply: Message) -> MetricRecord:
        """The reply's metrics, if they hold every candidate's loss (finite, >= 0) and accuracy (in [0, 1])."""
        metrics = reply_metrics(reply)
        for i in range(len(self.candidates)):
            loss, accuracy = metrics.get(candidate_loss_key(i)), metrics.get(candidate_accuracy_key(i))
            if not isinstance(loss, float) or not np.isfinite(loss) or loss < 0:
                raise ValueError(f"'{candidate_loss_key(i)}' missing or not a finite non-negative number")
            if not isinstance(accuracy, float) or not 0.0 <= accuracy <= 1.0:
                raise ValueError(f"'{candidate_accuracy_key(i)}' missing or outside [0, 1]")
        return metrics
