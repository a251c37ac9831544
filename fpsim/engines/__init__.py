"""Training engines: a model trained under a ``Policy``, observed by a ``Recorder``.

``numpy_engine``: the bit-exact engine, every product and its accumulation
emulated, on the MLP of ``mlp``.  Builds on ``fpsim.sim``.
"""
