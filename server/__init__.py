"""ServerApp: run settings, model init, strategy choice, the round loop, checkpoints, results."""
