"""Adversarial attacks and defenses under an exactly verified Wasserstein threat model on images."""

from .threat import Certificate, WassersteinBall

__version__ = "0.1.0"
__all__ = ["WassersteinBall", "Certificate", "__version__"]
