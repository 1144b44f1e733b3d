"""The run report: one HTML page with PNG plots."""
