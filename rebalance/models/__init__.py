"""Encoders and generators behind small interfaces; heavy libraries load lazily."""
