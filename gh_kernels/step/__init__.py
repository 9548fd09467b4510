"""The training-step layer: the one K-loss step engine (``engine.py``) behind ``Harmonizer`` and
``MultiTaskHarmonizer``, the checks it runs before touching any ``.grad`` (``checks.py``, ``graph.py``)
and its write into ``.grad`` (``write.py``)."""
