"""Real-world Keras model shapes, re-created small, saved by Keras 3 (and by ``tf_keras`` where TensorFlow is
installed), imported with ``from_keras`` and checked against the Keras that saved them.

Each builder follows a public example or a common pattern of published code: the Keras IMDB bidirectional
LSTM example, Keras's "text classification from scratch" CNN, CNN-BiLSTM hybrids, BiLSTM(-CRF-less) sequence
taggers, siamese question-pair models, hand-built dot-product attention, BiGRU with max- and average-pooled
outputs concatenated (Kaggle toxic-comment kernels), word + feature multi-input models, stacked residual
BiLSTMs, BiLSTMs with Keras's Attention / AdditiveAttention / MultiHeadAttention layers, a
character-level word encoder in TimeDistributed layers. Run ``python tests/helpers/keras_real_models.py``
(``--tf-keras`` for the TensorFlow side); it prints one line per model and file format and exits non-zero if any output
differs by more than 1e-5 (relative and absolute).
"""

import os
import sys
import tempfile
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

V, T, B = 50, 12, 5
TOL = 1e-5


def _masked_ids(rng: np.random.Generator) -> np.ndarray:
    """Full length, right-padded, left-padded (``pad_sequences``'s default), gaps, one valid step."""
    steps = np.arange(T)
    mask = np.stack([steps < T, steps < 7, steps >= T - 5, rng.random(T) > 0.4, steps == T - 1])
    return np.where(mask, rng.integers(1, V, (B, T)), 0).astype("int32")


def builders(keras: Any) -> Dict[str, Tuple[Callable[[], Any], Callable[[np.random.Generator], List[np.ndarray]]]]:
    """name -> (build the model, make its inputs)."""
    L = keras.layers
    bias = {"bias_initializer": "random_normal"}

    def ids_input(length=None):
        return keras.Input((length,), dtype="int32")

    def one(rng):
        return [_masked_ids(rng)]

    def two(rng):
        return [_masked_ids(rng), _masked_ids(rng)]

    def imdb_bilstm():                           # keras.io: bidirectional LSTM on IMDB
        x = ids_input()
        h = L.Embedding(V, 8)(x)
        h = L.Bidirectional(L.LSTM(6, return_sequences=True, **bias))(h)
        h = L.Bidirectional(L.LSTM(6, **bias))(h)
        return keras.Model(x, L.Dense(1, activation="sigmoid")(h))

    def imdb_bilstm_masked():
        return keras.Sequential([ids_input(), L.Embedding(V, 8, mask_zero=True),
                                 L.Bidirectional(L.LSTM(6, return_sequences=True, **bias)),
                                 L.Bidirectional(L.LSTM(6, **bias)), L.Dropout(0.5),
                                 L.Dense(1, activation="sigmoid")])

    def cnn_text():                              # keras.io: text classification from scratch (1-D CNN)
        x = ids_input()
        h = L.Dropout(0.5)(L.Embedding(V, 8)(x))
        h = L.Conv1D(8, 3, padding="valid", activation="relu", strides=2)(h)
        h = L.Conv1D(8, 3, padding="valid", activation="relu", strides=1)(h)
        h = L.GlobalMaxPooling1D()(h)
        return keras.Model(x, L.Dense(1, activation="sigmoid")(L.Dense(8, activation="relu")(h)))

    def cnn_bilstm():                            # Conv1D + MaxPooling1D in front of a BiLSTM
        return keras.Sequential([ids_input(T), L.Embedding(V, 8), L.Conv1D(8, 3, padding="same", activation="relu"),
                                 L.MaxPooling1D(2), L.Bidirectional(L.LSTM(5, **bias)),
                                 L.Dense(3, activation="softmax")])

    def bilstm_cnn():                            # BiLSTM then Conv1D + pooling (after the recurrent layer)
        return keras.Sequential([ids_input(), L.Embedding(V, 8, mask_zero=True),
                                 L.Bidirectional(L.GRU(5, return_sequences=True, **bias)),
                                 L.Conv1D(6, 2, padding="same", activation="relu"), L.GlobalMaxPooling1D(),
                                 L.Dense(2, activation="softmax")])

    def toxic_bigru_pools():                     # Kaggle toxic comments: BiGRU, max + average pool, concatenate
        x = ids_input()
        h = L.SpatialDropout1D(0.2)(L.Embedding(V, 8, mask_zero=True)(x))
        h = L.Bidirectional(L.GRU(6, return_sequences=True, **bias))(h)
        pooled = L.Concatenate()([L.GlobalAveragePooling1D()(h), L.GlobalMaxPooling1D()(h)])
        return keras.Model(x, L.Dense(6, activation="sigmoid")(pooled))

    def ner_tagger():                            # BiLSTM sequence tagger, TimeDistributed(Dense) softmax
        return keras.Sequential([ids_input(), L.Embedding(V, 8, mask_zero=True),
                                 L.Bidirectional(L.LSTM(6, return_sequences=True, **bias)),
                                 L.TimeDistributed(L.Dense(5, activation="softmax"))])

    def pos_tagger_gru():
        return keras.Sequential([ids_input(), L.Embedding(V, 8, mask_zero=True),
                                 L.Bidirectional(L.GRU(5, return_sequences=True, **bias), merge_mode="sum"),
                                 L.Bidirectional(L.GRU(5, return_sequences=True, **bias), merge_mode="ave"),
                                 L.Dense(4), L.Activation("softmax")])

    def siamese_questions():                     # Quora question pairs: shared encoder, |a - b|, a * b
        left, right = ids_input(), ids_input()
        embed = L.Embedding(V, 8, mask_zero=True)
        encode = L.Bidirectional(L.LSTM(5, **bias))
        a, b = encode(embed(left)), encode(embed(right))
        features = L.Concatenate()([a, b, L.Subtract()([a, b]), L.Multiply()([a, b])])
        return keras.Model([left, right], L.Dense(1, activation="sigmoid")(L.Dense(8, activation="relu")(features)))

    def siamese_cosine():
        left, right = ids_input(), ids_input()
        embed = L.Embedding(V, 8, mask_zero=True)
        encode = L.Bidirectional(L.GRU(4, **bias), merge_mode="sum")
        return keras.Model([left, right], L.Dot(axes=1, normalize=True)([encode(embed(left)), encode(embed(right))]))

    def dot_attention():                         # attention from Dense + dot + softmax + dot
        x = ids_input(T)
        h = L.Bidirectional(L.LSTM(5, return_sequences=True, **bias))(L.Embedding(V, 8)(x))
        scores = L.Flatten()(L.Dense(1, activation="tanh")(h))
        weights = L.Activation("softmax")(scores)
        context = L.Dot(axes=1)([weights, h])
        return keras.Model(x, L.Dense(2, activation="softmax")(context))

    def self_attention_dot():
        x = ids_input()
        h = L.Bidirectional(L.GRU(4, return_sequences=True, **bias))(L.Embedding(V, 8, mask_zero=True)(x))
        weights = L.Activation("softmax")(L.Dot(axes=[2, 2])([h, h]))
        context = L.Dot(axes=[2, 1])([weights, h])
        return keras.Model(x, L.GlobalAveragePooling1D()(L.Add()([context, h])))

    def word_and_features():                     # multi-input: token ids + per-step float features
        ids, feats = ids_input(), keras.Input((None, 3))
        h = L.Concatenate()([L.Embedding(V, 6, mask_zero=True)(ids), feats])
        h = L.Bidirectional(L.LSTM(5, return_sequences=True, **bias))(h)
        return keras.Model([ids, feats], L.TimeDistributed(L.Dense(3))(h))

    def residual_bilstm():                       # stacked BiLSTMs with a residual Add
        x = ids_input()
        e = L.Embedding(V, 10, mask_zero=True)(x)
        h1 = L.Bidirectional(L.LSTM(5, return_sequences=True, **bias))(e)
        h2 = L.Bidirectional(L.LSTM(5, return_sequences=True, **bias))(h1)
        return keras.Model(x, L.GlobalMaxPooling1D()(L.Add()([h1, h2])))

    def two_outputs():                           # a classifier head and a tagger head
        x = ids_input()
        h = L.Bidirectional(L.GRU(5, return_sequences=True, **bias))(L.Embedding(V, 8, mask_zero=True)(x))
        return keras.Model(x, [L.Dense(2, activation="softmax")(L.GlobalAveragePooling1D()(h)), L.Dense(4)(h)])

    def keras2_era_defaults():                   # recurrent_activation="hard_sigmoid", Keras 2.2's default
        return keras.Sequential([ids_input(), L.Embedding(V, 8, mask_zero=True),
                                 L.Bidirectional(L.LSTM(5, recurrent_activation="hard_sigmoid", **bias)),
                                 L.Dense(2, activation="softmax")])

    def gru_relu():                              # GRU(activation="relu") inside Bidirectional
        return keras.Sequential([ids_input(), L.Embedding(V, 8, mask_zero=True),
                                 L.Bidirectional(L.GRU(5, activation="relu", return_sequences=True, **bias)),
                                 L.GlobalAveragePooling1D(), L.Dense(2)])

    def batchnorm_flatten_relu6():
        return keras.Sequential([ids_input(T), L.Embedding(V, 8), L.Bidirectional(L.LSTM(4, return_sequences=True)),
                                 L.BatchNormalization(), L.Flatten(), L.Dense(6, activation="relu6"),
                                 L.Dense(2, activation="softmax")])

    def layernorm_bigru():
        return keras.Sequential([ids_input(), L.Embedding(V, 8, mask_zero=True), L.LayerNormalization(),
                                 L.Bidirectional(L.GRU(5, reset_after=False, **bias)), L.Dense(3)])

    def conv_branches():                         # Kim-CNN style parallel kernels + a BiLSTM branch
        x = ids_input(T)
        e = L.Embedding(V, 8)(x)
        branches = [L.GlobalMaxPooling1D()(L.Conv1D(4, k, activation="relu")(e)) for k in (2, 3, 4)]
        branches.append(L.Bidirectional(L.LSTM(4, **bias))(e))
        return keras.Model(x, L.Dense(2, activation="softmax")(L.Concatenate()(branches)))

    def masking_features():                      # float sequences padded with zeros, Masking + BiLSTM
        x = keras.Input((None, 3))
        h = L.Bidirectional(L.LSTM(4, **bias))(L.Masking(0.0)(x))
        return keras.Model(x, L.Dense(1)(h))

    def bilstm_attention():                      # BiLSTM + keras.layers.Attention self-attention classifier
        x = ids_input()
        h = L.Bidirectional(L.LSTM(5, return_sequences=True, **bias))(L.Embedding(V, 8, mask_zero=True)(x))
        context = L.Attention(use_scale=True)([h, h])
        pooled = L.Concatenate()([L.GlobalAveragePooling1D()(context), L.GlobalMaxPooling1D()(h)])
        return keras.Model(x, L.Dense(3, activation="softmax", **bias)(pooled))

    def bahdanau_attention():                    # Bahdanau (additive) attention with a learnt query projection
        x = ids_input()
        h = L.Bidirectional(L.GRU(4, return_sequences=True, **bias))(L.Embedding(V, 8, mask_zero=True)(x))
        query = L.Dense(8, activation="tanh", **bias)(h)
        context = L.AdditiveAttention()([query, h])
        return keras.Model(x, L.Dense(1, activation="sigmoid", **bias)(L.GlobalAveragePooling1D()(context)))

    def bilstm_transformer_block():              # keras.io "text classification with Transformer" over a BiLSTM
        x = ids_input(T)
        h = L.Bidirectional(L.LSTM(4, return_sequences=True, **bias))(L.Embedding(V, 8)(x))
        attended = L.MultiHeadAttention(num_heads=2, key_dim=4, bias_initializer="random_normal")(h, h)
        h = L.LayerNormalization(epsilon=1e-6)(L.Add()([h, attended]))
        h = L.LayerNormalization(epsilon=1e-6)(L.Add()([h, L.Dense(8, activation="relu", **bias)(h)]))
        return keras.Model(x, L.Dense(2, activation="softmax")(L.GlobalAveragePooling1D()(h)))

    def char_word_tagger():                      # BiLSTM-CNN NER: word embeddings + a char BiLSTM per word
        words, chars = ids_input(), keras.Input((None, 6), dtype="int32")
        c = L.TimeDistributed(L.Embedding(20, 4, mask_zero=True))(chars)
        c = L.TimeDistributed(L.Bidirectional(L.LSTM(3, **bias)))(c)
        h = L.Concatenate()([L.Embedding(V, 8, mask_zero=True)(words), c])
        h = L.Bidirectional(L.LSTM(5, return_sequences=True, **bias))(h)
        return keras.Model([words, chars], L.TimeDistributed(L.Dense(4, activation="softmax", **bias))(h))

    def words_and_chars(rng):
        ids = _masked_ids(rng)
        lengths = rng.integers(1, 7, ids.shape)
        chars = np.where(np.arange(6) < lengths[..., None], rng.integers(1, 20, (*ids.shape, 6)), 0)
        return [ids, np.where(ids[..., None] > 0, chars, 0).astype("int32")]

    def features(rng):
        x = rng.normal(size=(B, T, 3)).astype("float32")
        return [np.where(_masked_ids(rng)[..., None] > 0, x, 0.0).astype("float32")]

    def ids_and_features(rng):
        ids = _masked_ids(rng)
        return [ids, np.where(ids[..., None] > 0, rng.normal(size=(B, T, 3)), 0.0).astype("float32")]

    return {
        "imdb_bilstm": (imdb_bilstm, one), "imdb_bilstm_masked": (imdb_bilstm_masked, one),
        "cnn_text": (cnn_text, one), "cnn_bilstm": (cnn_bilstm, one), "bilstm_cnn": (bilstm_cnn, one),
        "toxic_bigru_pools": (toxic_bigru_pools, one), "ner_tagger": (ner_tagger, one),
        "pos_tagger_gru": (pos_tagger_gru, one), "siamese_questions": (siamese_questions, two),
        "siamese_cosine": (siamese_cosine, two), "dot_attention": (dot_attention, one),
        "self_attention_dot": (self_attention_dot, one), "word_and_features": (word_and_features, ids_and_features),
        "residual_bilstm": (residual_bilstm, one), "two_outputs": (two_outputs, one),
        "keras2_era_defaults": (keras2_era_defaults, one), "gru_relu": (gru_relu, one),
        "batchnorm_flatten_relu6": (batchnorm_flatten_relu6, one), "layernorm_bigru": (layernorm_bigru, one),
        "conv_branches": (conv_branches, one), "masking_features": (masking_features, features),
        "bilstm_attention": (bilstm_attention, one), "bahdanau_attention": (bahdanau_attention, one),
        "bilstm_transformer_block": (bilstm_transformer_block, one),
        "char_word_tagger": (char_word_tagger, words_and_chars),
    }




def _numpy(keras: Any, value: Any) -> List[np.ndarray]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [np.asarray(keras.ops.convert_to_numpy(v)) if hasattr(keras, "ops") else np.asarray(v) for v in values]


def run(keras: Any, formats: Tuple[str, ...], only: List[str] = ()) -> List[str]:
    """Build, save, import and compare every model; returns the failures (empty: all exact)."""
    import warnings

    import torch

    from models.keras import from_keras
    failures: List[str] = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, (build, make_inputs)) in enumerate(builders(keras).items()):
            if only and name not in only:
                continue
            rng = np.random.default_rng(index)
            model = build()
            inputs = make_inputs(rng)
            expected = _numpy(keras, model(inputs if len(inputs) > 1 else inputs[0]))
            for fmt in formats:
                path = os.path.join(folder, f"{name}.{fmt}")
                model.save(path)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    module = from_keras(path)
                feed = [torch.as_tensor(x.astype("int64") if x.dtype.kind == "i" else x) for x in inputs]
                got = module(feed if len(feed) > 1 else feed[0])
                got = [g.detach().numpy() for g in (got if isinstance(got, (list, tuple)) else [got])]
                worst = max(float(np.max(np.abs(g - e) / (TOL + np.abs(e)))) if g.shape == e.shape else np.inf
                            for g, e in zip(got, expected, strict=True))
                ok = all(g.shape == e.shape and np.allclose(g, e, atol=TOL, rtol=TOL) for g, e in
                         zip(got, expected, strict=True))
                print(f"{name:26s} {fmt:6s} {'ok' if ok else 'DIFFERS'}  (max |diff| / (1e-5 + |keras|) = {worst:.2g})")
                if not ok:
                    failures.append(f"{name}.{fmt}")
    return failures


def main() -> int:
    if "--tf-keras" in sys.argv:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import tf_keras as keras
        failures = run(keras, ("h5", "keras"))
    else:
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras
        failures = run(keras, ("keras", "h5"))
    print("all exact" if not failures else f"differ: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    sys.exit(main())
