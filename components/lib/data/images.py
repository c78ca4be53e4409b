"""The one image decoding and resizing function, used by preprocessing and by the served model.

Training data and served requests go through the same TensorFlow ops and both end as uint8
pixels, so a photo gives the model exactly the same input at training and at serving time.
Everything here is plain TensorFlow ops, so the exported graph runs it wherever it is served
(TF Serving included).
"""

from __future__ import annotations

import tensorflow as tf

EXIF_ORIENTATION_TAG = 0x0112
# JPEG markers (the byte after 0xFF): APP1 holds EXIF; the image data starts at SOS; EOI ends it.
_APP1, _SOS, _EOI = 0xE1, 0xDA, 0xD9
_EXIF_HEADER = b"Exif\x00\x00"
_EXIF_HEADER_VALUE = int.from_bytes(_EXIF_HEADER, "big")
_LITTLE_ENDIAN = 0x4949  # "II"; big endian is "MM"
_TIFF_MAGIC = 42
_TIFF_SHORT = 3
# Bounds that keep the parser's loops finite on any input; real photos need a handful of each.
_MAX_SEGMENTS = 32
_MAX_IFD_ENTRIES = 64


@tf.function
def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode JPEG/PNG/BMP/GIF bytes to an RGB ``(image_size, image_size, 3)`` uint8 tensor,
    turned the way a photo viewer shows it (the JPEG's EXIF orientation applied).

    Grayscale and RGBA inputs are converted to RGB by ``channels=3``. A ``tf.function`` so
    that eager callers (preprocessing, one image at a time) run it as one graph, not op by op.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    image = apply_orientation(image, exif_orientation(image_bytes))
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


def exif_orientation(image_bytes: tf.Tensor) -> tf.Tensor:
    """The EXIF Orientation (1-8, int32) of JPEG bytes; 1 (as stored) when there is none, the
    bytes are not a JPEG, or anything in the EXIF data is malformed.

    ``tf.io.decode_image`` ignores this tag, so a phone photo taken upright but stored sideways
    would be seen sideways. The parse walks the JPEG's segments to the APP1 "Exif" one, reads the
    TIFF byte order and the first IFD's Orientation entry.
    """
    data = tf.cast(tf.io.decode_raw(image_bytes, tf.uint8), tf.int64)
    size = tf.size(data, out_type=tf.int64)
    # Padding lets every read stay in bounds; reads past the real end see zeros.
    data = tf.concat([data, tf.zeros([16], tf.int64)], axis=0)

    def read(offsets: tf.Tensor, width: int, little_endian: tf.Tensor) -> tf.Tensor:
        """Unsigned ``width``-byte integers at ``offsets``, in the given byte order."""
        indices = tf.expand_dims(offsets, -1) + tf.range(width, dtype=tf.int64)
        values = tf.gather(data, tf.clip_by_value(indices, 0, size + 15))
        powers = tf.constant([256**i for i in range(width)], tf.int64)
        weights = tf.where(little_endian, powers, tf.reverse(powers, [0]))
        return tf.reduce_sum(values * weights, axis=-1)

    big_endian = tf.constant(False)
    is_jpeg = tf.logical_and(
        size > 4, tf.equal(read(tf.constant(0, tf.int64), 2, big_endian), 0xFFD8)
    )

    def in_segments(position: tf.Tensor, found: tf.Tensor) -> tf.Tensor:
        marker = read(position, 2, big_endian)
        return tf.reduce_all(
            [
                is_jpeg,
                tf.logical_not(found),
                position + 4 <= size,
                marker // 256 == 0xFF,
                marker % 256 != _SOS,
                marker % 256 != _EOI,
            ]
        )

    def next_segment(position: tf.Tensor, found: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        is_exif = tf.logical_and(
            tf.equal(read(position, 2, big_endian) % 256, _APP1),
            tf.equal(read(position + 4, len(_EXIF_HEADER), big_endian), _EXIF_HEADER_VALUE),
        )
        length = read(position + 2, 2, big_endian)
        return tf.where(is_exif, position, position + 2 + length), is_exif

    position, found = tf.while_loop(
        in_segments,
        next_segment,
        (tf.constant(2, tf.int64), tf.constant(False)),
        maximum_iterations=_MAX_SEGMENTS,
    )
    tiff = position + 4 + len(_EXIF_HEADER)
    little_endian = tf.equal(read(tiff, 2, big_endian), _LITTLE_ENDIAN)
    valid_tiff = tf.logical_and(
        tf.logical_or(little_endian, tf.equal(read(tiff, 2, big_endian), 0x4D4D)),
        tf.equal(read(tiff + 2, 2, little_endian), _TIFF_MAGIC),
    )
    ifd = tiff + read(tiff + 4, 4, little_endian)
    count = tf.minimum(read(ifd, 2, little_endian), _MAX_IFD_ENTRIES)
    entries = ifd + 2 + 12 * tf.range(count, dtype=tf.int64)
    matches = tf.logical_and(
        tf.equal(read(entries, 2, little_endian), EXIF_ORIENTATION_TAG),
        tf.equal(read(entries + 2, 2, little_endian), _TIFF_SHORT),
    )
    values = read(tf.boolean_mask(entries, matches) + 8, 2, little_endian)
    value = tf.concat([values, tf.ones([1], tf.int64)], axis=0)[0]
    usable = tf.reduce_all(
        [found, valid_tiff, ifd + 2 + 12 * count <= size, value >= 1, value <= 8]
    )
    return tf.cast(tf.where(usable, value, 1), tf.int32)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turn stored ``(height, width, channels)`` pixels the way EXIF ``orientation`` (1-8) says
    a viewer shows them; any other value leaves them as stored."""
    branches = [
        lambda: image,  # 1: as stored
        lambda: tf.image.flip_left_right(image),  # 2: mirror left-right
        lambda: tf.image.rot90(image, k=2),  # 3: rotate 180 degrees
        lambda: tf.image.flip_up_down(image),  # 4: mirror top-bottom
        lambda: tf.image.transpose(image),  # 5: transpose (mirror along the main diagonal)
        lambda: tf.image.rot90(image, k=3),  # 6: rotate 90 degrees clockwise
        lambda: tf.image.rot90(tf.image.transpose(image), k=2),  # 7: transverse (other diagonal)
        lambda: tf.image.rot90(image, k=1),  # 8: rotate 90 degrees counter-clockwise
    ]
    index = tf.where((orientation >= 1) & (orientation <= 8), orientation - 1, 0)
    return tf.switch_case(index, branches)
