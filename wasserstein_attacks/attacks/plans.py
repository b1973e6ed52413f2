"""Placeholder: filled in by the attacks work."""

__all__: list[str] = []
