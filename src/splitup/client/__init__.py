"""The client side of SplitUp: sending jobs through a pipeline of nodes and reading back the results.

:mod:`splitup.client.pipeline` drives a plan over a route of node endpoints (batch inference and text
generation with the KV cache held on the nodes, with re-routing when a node fails);
:mod:`splitup.client.sampling` turns logits into tokens the same way for pipelines and local references.
"""
