"""The pipeline's library: plain functions the steps in ``components/`` call.

Sub-packages, each owning one concern, with imports pointing only downward (checked by
import-linter, see ``pyproject.toml``):

- ``evaluation``: metrics, the deploy decision and the HTML report;
- ``targets``: where models are registered and served (local or Vertex AI), behind one interface;
- ``modelling``: the backbone, the classifier, its training loop, distribution and export;
- ``serving``: the export contract, loading an exported model, decoding prediction requests;
- ``data``: dataset layout, validation, TFRecords, image decoding, demo data;
- ``storage``: the URI seam (local folders and ``gs://``).
"""
