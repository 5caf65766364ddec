"""Grad-CAM over the last dense block, computed the same way under TensorFlow and JAX.

Grad-CAM weights each feature map A_k of a layer by the mean gradient of the class score over
it. Our head is global average pooling then `logits` (a Dense layer), so that gradient is
w[k, c] / (H * W) at every position: Grad-CAM here equals ReLU(sum_k w[k, c] A_k), computed in
closed form (the features from one compiled forward pass, the sum in numpy), with no
backend-specific autodiff (Zhou et al.'s CAM, which Selvaraju et al. show Grad-CAM
generalises). The feature maps are those of the `relu` layer, the output of the last dense
block after its final BatchNorm.

The map is clipped at zero (the ReLU of Grad-CAM) rather than drawn relative to the image's
mean: negative evidence for a finding, such as another finding's spot in a multi-label model,
is not heat for it, and a map relative to the mean would colour half of every image. Each map
is scaled to its own peak, so it shows where, not how strongly; the title gives the probability.
"""

from __future__ import annotations

import io
import math
import weakref

import keras
import numpy as np

from cxr_tf import storage

FEATURE_LAYER = "relu"


def heatmaps(model: keras.Model, images: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM maps for `class_index`, (N, h, w) in [0, 1] at the feature-map resolution.

    `images` as the model takes them (its input contract); the features come from one compiled
    forward pass (`inference.ForwardPass`, built once per model), the maps from numpy."""
    return heatmap_pairs(model, images, [class_index] * len(images))


def heatmap_pairs(
    model: keras.Model, images: np.ndarray, class_indices, *, batch_size: int = 1
) -> np.ndarray:
    """As `heatmaps`, with image i's map for class `class_indices[i]`: one forward pass for
    maps of different findings (localisation scores each box for its own finding), compiled
    for batches of `batch_size` (1 for `predict`'s single images)."""
    feats = _features(model, batch_size)(images)
    weights = np.asarray(model.get_layer("logits").kernel)[:, list(class_indices)].T
    cam = np.maximum(np.einsum("nhwk,nk->nhw", feats, weights), 0.0)
    peak = cam.reshape(len(cam), -1).max(axis=1)[:, None, None]
    return np.where(peak > 0, cam / np.maximum(peak, 1e-12), 0.0)


_FEATURES = weakref.WeakKeyDictionary()


def _features(model: keras.Model, batch_size: int = 1):
    """The compiled forward pass to the `relu` feature maps, made once per model and batch."""
    passes = _FEATURES.setdefault(model, {})
    if batch_size not in passes:
        from cxr_tf.inference import ForwardPass

        feature_model = keras.Model(model.input, model.get_layer(FEATURE_LAYER).output)
        passes[batch_size] = ForwardPass(feature_model, batch_size=batch_size)
    return passes[batch_size]


def upsample(cam: np.ndarray, size: int) -> np.ndarray:
    """A (h, w) map resized bilinearly to (size, size)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(cam, np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8: the grayscale input (S, S, C in [0, 1]) with the heatmap in 'jet' on top."""
    from matplotlib import colormaps

    gray = np.asarray(image, np.float32)[..., 0]
    heat = colormaps["jet"](upsample(cam, gray.shape[0]))[..., :3]
    rgb = (1 - alpha) * np.repeat(gray[..., None], 3, axis=-1) + alpha * heat
    return np.clip(rgb * 255, 0, 255).astype(np.uint8)


def eval_crop_box(height: int, width: int, image_size: int, crop_fraction: float):
    """(top, left, box height, box width) in the original image's pixels of what the evaluation
    transform (`input_pipeline.eval_transform`) shows the model: the whole image squashed to a
    square of ceil(S / crop_fraction), then its centre S x S; with crop_fraction 1, all of it."""
    side = math.ceil(image_size / crop_fraction - 1e-9)
    top = (side - image_size) // 2
    sy, sx = height / side, width / side
    return top * sy, top * sx, image_size * sy, image_size * sx


def emptiness(cam: np.ndarray, finding: str | None = None) -> str | None:
    """What the title says of a map with nothing to show, else None: all zero (the model saw
    no positive evidence for the finding anywhere: every position's sum of weighted features
    is negative, which the ReLU clips), or flat (the same heat everywhere: no location)."""
    cam = np.asarray(cam, np.float32)
    what = f" for {finding}" if finding else ""
    if not np.any(cam > 0):
        return f"map empty: no positive evidence{what}"
    if float(cam.max() - cam.min()) <= 1e-6 * float(cam.max()):
        return f"map flat: evidence{what} spread evenly, no location"
    return None


def figure(
    original, cam, box, title: str, path, *, alpha: float = 0.45, finding: str | None = None
) -> None:
    """A PNG of the whole image as the user gave it (gray, at its aspect ratio, about 900 px
    wide), the heatmap over the part the model saw (`box` from `eval_crop_box`; outlined unless
    it is the whole image), a colour bar, and `title` (finding, probability, threshold); a map
    with nothing to show says so on a second title line (`emptiness`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gray = np.asarray(original, np.float32)
    h, w = gray.shape
    top, left, box_h, box_w = box
    fig, ax = plt.subplots(figsize=(7.5 * w / max(h, w) + 1.5, 7.5 * h / max(h, w) + 0.8))
    ax.imshow(gray, cmap="gray", extent=(0, w, h, 0))
    shown = ax.imshow(
        upsample(cam, 224),
        cmap="jet",
        alpha=alpha,
        vmin=0,
        vmax=1,
        extent=(left, left + box_w, top + box_h, top),
    )
    if (box_h, box_w) != (h, w):  # outline the part the model saw, where it is not all
        ax.add_patch(
            plt.Rectangle((left, top), box_w, box_h, fill=False, ec="white", lw=0.8, ls="--")
        )
    ax.set(xlim=(0, w), ylim=(h, 0), xticks=[], yticks=[])
    empty = emptiness(cam, finding)
    ax.set_title(title + (f"\n({empty})" if empty else ""), fontsize=12)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("Grad-CAM (relative)")
    fig.tight_layout()
    buffer = io.BytesIO()  # through cxr_tf.storage: the folder may be a URL
    fig.savefig(buffer, dpi=120, format="png")
    plt.close(fig)
    storage.write_bytes(path, buffer.getvalue())
