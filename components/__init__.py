"""The pipeline's steps: one module per step, each a thin KFP component over ``components.lib``.

On Vertex AI each component runs in the image of its role (``components.images``), which
carries this package and its dependencies; locally ``kfp.local`` runs them in this environment,
or in the same images with ``--runner docker``.
"""
