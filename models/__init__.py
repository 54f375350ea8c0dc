"""birnn-zoo: multi-layer bidirectional RNNs with a Keras merge mode after every layer."""
