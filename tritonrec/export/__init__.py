"""Writing Triton model repositories: a transform model, or transform -> lookup -> scorer as one ensemble.

- :mod:`~tritonrec.export.transform`: :func:`export_transform`, :func:`load_or_compile`
- :mod:`~tritonrec.export.ensemble`: :func:`export_ensemble`, :class:`ServedScorer`
- :mod:`~tritonrec.export.checks`: that the plan, the store and the scorer chain
- :mod:`~tritonrec.export.render`: ``config.pbtxt`` templates, version directories, copies
"""

from tritonrec.export.checks import scorer_info, store_metadata
from tritonrec.export.ensemble import ServedScorer, export_ensemble
from tritonrec.export.render import next_version, render_template, tensor_block, templates_dir
from tritonrec.export.transform import export_transform, load_or_compile

__all__ = [
    "ServedScorer", "export_ensemble", "export_transform", "load_or_compile", "next_version", "render_template",
    "scorer_info", "store_metadata", "tensor_block", "templates_dir",
]
