"""cxr_tf: chest X-ray classification with TensorFlow and Keras 3.

Raw Kaggle pneumonia / NIH ChestX-ray14 archives -> sharded TFRecords -> DenseNet training on
TPU, GPU or CPU -> evaluation, export and prediction. Importing the package is cheap: TensorFlow
is imported only by the modules that need it (see `cxr_tf.deps`).
"""

__version__ = "0.1.0"
