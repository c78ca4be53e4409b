"""The model: the EfficientNet-Lite backbone, the classifier, its training loop and export."""
