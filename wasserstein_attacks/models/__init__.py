"""Models: architectures, safe checkpoint I/O and the model zoo of published checkpoints.

- ``architectures``: ``build_model`` by name (``mnist_convnet``, ``resnet18``, ``tiny``),
  ``Normalize``, ``BinarizedInput``.
- ``checkpoints``: ``safe_load`` (``weights_only=True``), other people's formats
  (``load_weights``) and the project's own (``save_checkpoint``, ``load_checkpoint``).
- ``zoo``: ``load_model`` by name (``mnist_adv_training``, ...; ``list_models``), downloaded
  once from the authors' repository, checked against its sha256 and cached.

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
