"""Benchmarks of the birnn-zoo blocks against PyTorch's fused RNNs, hand-written loops and Keras 3.

Run ``python -m benchmarks.run [--device cpu|cuda] [--quick] [--threads N]``; results go to
``benchmarks/results/<device>.json`` and ``.md``. Not part of the test suite.
"""
