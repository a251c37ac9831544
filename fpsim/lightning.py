"""``fpsim.lightning.EmulatedPrecision``: the Lightning precision plugin (``fpsim.integrations.lightning``)."""

from .integrations.lightning import EmulatedPrecision

__all__ = ["EmulatedPrecision"]
