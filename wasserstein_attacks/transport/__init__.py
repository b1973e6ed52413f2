"""Transport plans on the pixel grid: the local-window layout and the operations on it.

A plan of an image ``x`` of shape ``[B, C, H, W]`` is stored as ``[B, C, H*W, k*k]``: row ``i`` holds
the mass that pixel ``i`` sends to each of the ``k x k`` pixels around it (``window_offsets``).
"""

from .grid import *  # noqa: F403
from .grid import __all__  # noqa: F401
