"""Pruning algorithms as small parts the strategies are composed of: data-free importance scores (SynFlow,
magnitude, random), schedules that turn a score into a mask, FedTiny's candidate masks, progressive
grow/prune steps and budget → density arithmetic, and the aggregation rules that merge client replies.

Nothing here builds or reads messages, and every wire name comes from ``fedprune.protos.contract``: HideNseek's
rule objects (``sign_aggregation``) name their uploads' tensors with it, so the server's check and the
client's upload are one object. Strategies (``fedprune.strategies``) and the client (``fedprune.client``)
both build on these parts.
"""
