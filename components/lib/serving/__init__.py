"""Serving an exported model: its contract, loading it, and the prediction server (Vertex AI's
protocol, dynamic batching, the page, metrics) that ``python -m pipeline.serve`` runs.

Independent of training: nothing here imports ``components.lib.modelling``, and nothing but
``prediction`` imports TensorFlow, so the server starts and answers ``--help`` without it.
"""
