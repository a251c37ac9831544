"""Sub-commands of the ``fpsim`` command line (see ``fpsim.cli``)."""
