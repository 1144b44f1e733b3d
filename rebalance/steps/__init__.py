"""Built-in steps, one module per concern; each is listed under the ``rebalance.steps`` entry points."""
