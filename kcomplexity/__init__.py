"""kcomplexity: estimates of the algorithmic (Kolmogorov) complexity of neural-network weights, in bits."""
from __future__ import annotations

from . import codecs, estimators
from .errors import KComplexityError
from .estimators.bdm import bdm, block_entropy, nbdm
from .estimators.mdl import MDL, mdl
from .intrinsic import Intrinsic, intrinsic
from .pack import pack, unpack
from .codecs.quant import decode_quantized, encode_quantized
from .rd import RDCurve, rd
from .report import Report
from .scoring import score
from .sources import NamedArray, open_source

__version__ = "0.1.0"

__all__ = ["score", "Report", "bdm", "block_entropy", "nbdm", "mdl", "MDL", "encode_quantized", "decode_quantized",
           "rd", "RDCurve", "intrinsic", "Intrinsic", "estimators", "codecs", "pack", "unpack", "open_source", "NamedArray",
           "KComplexityError", "__version__"]
