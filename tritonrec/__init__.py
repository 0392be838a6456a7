"""tritonrec: recommender inference on Triton Inference Server.

Compiled NVTabular transforms served by Python-based Triton backends, with a hierarchical
embedding cache (``embedding_cache``) behind them.
"""

__version__ = "0.1.0"
