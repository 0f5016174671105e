"""Proof of Sampling: the game's economics, the output comparison rule, commitments and sampling.

The pure parts live here; the chain program and the node call into them so that every party applies
the same rule (docs/posp.md).
"""
