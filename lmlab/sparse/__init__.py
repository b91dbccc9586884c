"""Sparse attention: a window of k neighbours plus sink tokens, dense or sparse per layer.

`masks` builds the patterns, `attention` computes them without touching the masked-out
(query, key) pairs, and `apply` installs them into a `Transformer` for one forward pass.
"""

from lmlab.sparse.apply import sparse_attention
from lmlab.sparse.attention import local_sink_attention
from lmlab.sparse.masks import SparsePattern, layer_schedule

__all__ = ["SparsePattern", "layer_schedule", "local_sink_attention", "sparse_attention"]
