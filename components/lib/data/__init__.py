"""Datasets: the layout of a data URI, validation, TFRecords, image decoding, demo data."""
