"""Reward functions behind one interface: verifier, learned reward models, shaping."""
