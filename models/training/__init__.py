"""Training: the loop behind ``train.py`` (``loop.train``), its config checks, checkpoints, resume, run folders,
stopping signals, multi-process sharding and the sweep report."""
