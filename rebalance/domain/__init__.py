"""The domain below the methods and the steps: the dataset tables and artifact types, classes with
their buckets and quotas, the stage ledger, prompts and text normalisation.

It imports only the runtime's artifact protocol and io, never a method or a step.
"""
