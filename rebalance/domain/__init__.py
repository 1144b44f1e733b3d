"""The domain library below the steps: classes, their buckets and quotas, the stage ledger, prompts.

Steps, the report, the trainers and compare import it; it imports only ``core`` artifacts and the
numeric libraries (``rebalance.retrieval``), never a step.
"""
