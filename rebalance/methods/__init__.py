"""The numeric methods, one module per method, each with its formula and paper in the docstrings.

Concept matching and frequency (``counter``, ``inflection``, ``frequency``), retrieval and its
precision estimate, the FAISS index, sampling (RFS, IRFS, class-balanced, square-root), dedup
(SemDeDup), entity thinning (ADR) and feature-space synthesis (SMOTE, calibrated Gaussians).
They import the domain types and io only: never a step, a model loader or the runtime's runner.
"""
