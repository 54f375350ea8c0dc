"""``TimeDistributed`` around the layers the importer supports (not only ``Dense``): character-level word
encoders over ``(batch, words, chars)`` ids (``TimeDistributed(Embedding)``, ``TimeDistributed(Bidirectional(LSTM))``,
``TimeDistributed(Conv1D)`` + ``TimeDistributed(GlobalMaxPooling1D)``), imported from ``.keras`` and ``.h5`` and
compared with Keras 3 with word padding (left, right, gaps) and char padding; weights random.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest
import torch

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from models.keras import KerasImportError, from_keras, module_from_specs  # noqa: E402

B, W, C, V, CV = 4, 6, 5, 15, 11
TOL = 1e-5
BIAS = {"bias_initializer": "random_normal"}


def _inputs(seed: int):
    """Word ids (B, W) with padding at the left, right and in gaps, and char ids (B, W, C) right-padded per word
    (zero where the word is padding)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(W)
    word_mask = np.stack([steps < W, steps < 3, steps >= W - 2, rng.random(W) > 0.4])
    word_mask[3, 2] = True
    words = np.where(word_mask, rng.integers(1, V, (B, W)), 0).astype("int64")
    lengths = rng.integers(1, C + 1, (B, W))
    chars = np.where(np.arange(C) < lengths[..., None], rng.integers(1, CV, (B, W, C)), 0)
    return words, np.where(word_mask[..., None], chars, 0).astype("int64")


def _check(model, tmp_path, feed: list) -> float:
    expected = [keras.ops.convert_to_numpy(v) for v in (lambda out: out if isinstance(out, list) else [out])(
        model(feed if len(feed) > 1 else feed[0]))]
    worst = 0.0
    for fmt in ("keras", "h5"):
        model.save(tmp_path / f"t.{fmt}")
        module = from_keras(tmp_path / f"t.{fmt}")
        torch_feed = [torch.as_tensor(x) for x in feed]
        candidates = [module] + ([torch.jit.script(module)] if fmt == "keras" else [])
        for candidate in candidates:
            got = candidate(torch_feed if len(feed) > 1 else torch_feed[0])
            got = got if isinstance(got, list) else [got]
            for g, e in zip(got, expected, strict=True):
                assert tuple(g.shape) == e.shape
                np.testing.assert_allclose(g.detach().numpy(), e, atol=TOL, rtol=TOL)
                worst = max(worst, float(np.abs(g.detach().numpy() - e).max()))
    rebuilt = module_from_specs(module.keras_specs)
    rebuilt.load_state_dict(module.state_dict())
    return worst


def test_char_bilstm_word_encoder_tagger(tmp_path) -> None:
    """The BiLSTM-CNN-CRF family's char encoder (minus the CRF): word embeddings (masked) + a BiLSTM over each
    word's chars (TimeDistributed(Embedding(mask_zero)) gives no mask, so char padding is computed on, as in
    Keras), concatenated, a BiLSTM tagger, TimeDistributed(Dense)."""
    words, chars = keras.Input((None,), dtype="int32"), keras.Input((None, C), dtype="int32")
    w = layers.Embedding(V, 4, mask_zero=True)(words)
    c = layers.TimeDistributed(layers.Embedding(CV, 3, mask_zero=True))(chars)
    c = layers.TimeDistributed(layers.Bidirectional(layers.LSTM(2, **BIAS)))(c)
    x = layers.Concatenate()([w, c])
    x = layers.Bidirectional(layers.LSTM(3, return_sequences=True, **BIAS))(x)
    model = keras.Model([words, chars], layers.TimeDistributed(layers.Dense(5, activation="softmax", **BIAS))(x))
    _check(model, tmp_path, list(_inputs(1)))


def test_char_cnn_word_encoder(tmp_path) -> None:
    """The char-CNN encoder: TimeDistributed(Embedding), (Conv1D same padding, relu), (GlobalMaxPooling1D), a
    TimeDistributed(GRU) on the side, and the word-level BiGRU classifier over both."""
    words, chars = keras.Input((W,), dtype="int32"), keras.Input((W, C), dtype="int32")
    c = layers.TimeDistributed(layers.Embedding(CV, 3))(chars)
    conv = layers.TimeDistributed(layers.Conv1D(4, 3, padding="same", activation="relu", **BIAS))(c)
    pooled = layers.TimeDistributed(layers.GlobalMaxPooling1D())(conv)
    recurrent = layers.TimeDistributed(layers.GRU(2, **BIAS))(c)
    w = layers.Embedding(V, 4)(words)
    x = layers.Concatenate()([w, pooled, recurrent])
    x = layers.Bidirectional(layers.GRU(3, **BIAS))(layers.TimeDistributed(layers.Dropout(0.5))(x))
    model = keras.Model([words, chars], layers.Dense(2, activation="softmax", **BIAS)(x))
    _check(model, tmp_path, list(_inputs(2)))


def test_time_distributed_of_an_unsupported_layer_is_refused(tmp_path) -> None:
    inputs = keras.Input((W, C), dtype="int32")
    x = layers.TimeDistributed(layers.Embedding(CV, 3))(inputs)
    model = keras.Model(inputs, layers.TimeDistributed(layers.ZeroPadding1D(), name="td")(x))
    model.save(tmp_path / "r.keras")
    with pytest.raises(KerasImportError, match=r"layer 'td'.*TimeDistributed wraps 'ZeroPadding1D'"):
        from_keras(tmp_path / "r.keras")
