"""momos: Mosaic-of-Motifs training, measured with kcomplexity."""
from __future__ import annotations

from .errors import MoMosError
from .mosaic import Mosaic
from .projection import MoMos, Projection, project

__all__ = ["project", "MoMos", "Projection", "Mosaic", "MoMosError"]
