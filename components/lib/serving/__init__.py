"""Serving an exported model: its contract, loading it, and decoding prediction requests.

Independent of training: nothing here imports ``components.lib.modelling``.
"""
