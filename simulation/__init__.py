"""Ray-backed simulation: a private local SuperLink, `flwr run`, progress, reports."""
