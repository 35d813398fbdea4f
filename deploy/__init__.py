"""Real deployment on Flower's deployment engine: certificates and node keys, launch commands, loopback launcher."""
