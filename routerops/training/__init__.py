"""Router training: the local CPU trainer (tiny_policy, local_backend) and the verl adapter (verl/)."""
