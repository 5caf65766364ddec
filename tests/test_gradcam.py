"""cxr_tf.gradcam: maps are per class. (Maps of the trained demo model are tested on the
synthetic opacity in tests/test_predict.py.)"""

import keras
import numpy as np

from cxr_tf import gradcam


def _two_finding_model(size=16):
    """Global average pooling over two feature maps, then a logit per finding: finding 0 reads
    feature 0, finding 1 feature 1 (the layer names `gradcam` looks for)."""
    inputs = keras.Input((size, size, 2))
    feats = keras.layers.Activation("relu", name="relu")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(feats)
    logits = keras.layers.Dense(2, use_bias=False, name="logits")(pooled)
    model = keras.Model(inputs, keras.layers.Activation("sigmoid")(logits))
    model.get_layer("logits").set_weights([np.array([[2.0, -1.0], [-1.0, 2.0]], np.float32)])
    return model


def test_maps_of_two_findings_peak_in_their_own_regions():
    """Two findings on one image, in different places: each finding's map peaks on its own
    region and is near zero on the other's (the maps differ by far more than 1/255)."""
    size = 16
    image = np.zeros((1, size, size, 2), np.float32)
    image[0, 2:6, 2:6, 0] = 1.0  # finding 0, top left
    image[0, 10:14, 9:13, 1] = 1.0  # finding 1, bottom right
    model = _two_finding_model(size)
    maps = [gradcam.heatmaps(model, image, k)[0] for k in (0, 1)]
    for k, (top, left) in enumerate([(2, 2), (10, 9)]):
        peak = np.unravel_index(maps[k].argmax(), maps[k].shape)
        assert top <= peak[0] < top + 4 and left <= peak[1] < left + 4, (k, peak)
    assert maps[0][10:14, 9:13].max() == 0 and maps[1][2:6, 2:6].max() == 0
    assert np.abs(maps[0] - maps[1]).mean() > 0.1
    assert maps[0].max() == 1.0 and maps[1].max() == 1.0  # each normalised on its own
