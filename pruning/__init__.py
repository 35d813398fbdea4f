"""Pruning algorithms as small parts the strategies are composed of: data-free importance scores (SynFlow,
magnitude, random), schedules that turn a score into a mask, FedTiny's candidate masks, progressive
grow/prune steps and budget → density arithmetic, and the aggregation rules that merge client replies.

Nothing here builds or reads messages or knows a wire name (that is ``fedprune.protos.contract``):
strategies (``fedprune.strategies``) and the client (``fedprune.client``) both build on these parts.
"""
