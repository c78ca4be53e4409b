"""The serving contract every exported model keeps (the challenge's, and Vertex AI's).

The SavedModel's ``serving_default`` signature takes encoded images as a string input named
``bytes`` and returns ``CLASSES`` (int64 class index) and ``PROBABILITIES`` (float32, one per
class); the class names sit beside it in ``class_names.json``. Training writes this contract and
serving reads it; both import it from here, so serving needs nothing from training.
"""

SERVING_INPUT = "bytes"
OUTPUT_CLASSES = "CLASSES"
OUTPUT_PROBABILITIES = "PROBABILITIES"
CLASS_NAMES_FILE = "class_names.json"
SIGNATURE_NAME = "serving_default"

# A second signature, for drift monitoring: the same ``bytes`` in, CLASSES and PROBABILITIES
# out as ``serving_default``, plus EMBEDDINGS (float32, the backbone's pooled features), in one
# pass. ``serving_default`` stays as the contract says, so clients and TF Serving see no change;
# a model exported without it is served and simply not monitored on embeddings.
MONITORING_SIGNATURE = "monitoring"
OUTPUT_EMBEDDINGS = "EMBEDDINGS"
