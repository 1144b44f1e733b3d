"""Synthesis of new tail examples: in feature space (SMOTE, calibrated Gaussians) and as images (diffusion)."""
