"""The AlphaFold2 model: :class:`AlphaFold` built from an :class:`AlphaFoldConfig`.

See :mod:`benchmarks.alphafold2.model.alphafold` for the feature dict the model consumes.
"""

from benchmarks.alphafold2.model.alphafold import AlphaFold
from benchmarks.alphafold2.model.config import AlphaFoldConfig

__all__ = ["AlphaFold", "AlphaFoldConfig"]
