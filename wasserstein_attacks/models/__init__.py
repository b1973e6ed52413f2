"""Models: architectures, safe checkpoint I/O and the reference-model zoo.

Every model takes images in pixel space, ``[B, C, H, W]`` in ``[0, 1]``, and returns logits
``[B, num_classes]``; any input normalization is a layer inside the model, so attacks and the
threat model never see normalized images.
"""

from .architectures import *  # noqa: F403
from .architectures import __all__ as _arch
from .checkpoints import *  # noqa: F403
from .checkpoints import __all__ as _ckpt
from .zoo import *  # noqa: F403
from .zoo import __all__ as _zoo

__all__ = [*_arch, *_ckpt, *_zoo]
