"""Data: image datasets read without network access, and natural transformations of images.

Images are float32 ``[N, C, H, W]`` in ``[0, 1]`` (pixel space), labels int64 ``[N]``.
"""

from .datasets import *  # noqa: F403
from .datasets import __all__ as _datasets
from .transforms import *  # noqa: F403
from .transforms import __all__ as _transforms

__all__ = [*_datasets, *_transforms]
