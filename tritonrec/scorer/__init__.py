"""Scoring models: the DLRM trained here, and the scorer artifact the torch_scorer backend serves."""
