"""The one-line answer when a torch feature is asked for without torch installed."""

from __future__ import annotations

INSTALL_HINT = 'fpsim\'s torch engine needs PyTorch: pip install "fpsim[torch]"'


def require_torch() -> None:
    """Raise ImportError (one line: what to install) when torch cannot be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
