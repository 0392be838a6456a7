"""The Criteo-shaped pipeline: synthetic data, the NVTabular workflow, and the demo."""
