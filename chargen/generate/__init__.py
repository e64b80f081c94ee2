"""Text out of a trained run: ``sampler`` (``Sampler``: load, generate, stream, score), the two
backends that step the network, ``torch_step`` and ``numpy_step`` (torch-free), the counter-based
``draws`` both share, and ``export`` (one ONNX step). Nothing is imported eagerly, so the NumPy
backend runs where torch is not installed."""
