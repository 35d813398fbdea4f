"""ClientApp: local data, local training and evaluation on each edge client."""
