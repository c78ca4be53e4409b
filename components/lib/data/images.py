"""The one image decoding and resizing function, used by preprocessing and by the served model.

Training data and served requests go through the same TensorFlow ops and both end as uint8
pixels, so a photo gives the model exactly the same input at training and at serving time.
"""

from __future__ import annotations

import tensorflow as tf


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode JPEG/PNG/BMP/GIF bytes to an RGB ``(image_size, image_size, 3)`` uint8 tensor.

    Grayscale and RGBA inputs are converted to RGB by ``channels=3``.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)
