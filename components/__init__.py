"""The pipeline's steps: one module per step, each a thin KFP component over ``components.lib``.

On Vertex AI every component runs in the project's own image (built from ``docker/``), which
carries this package and its dependencies; locally ``kfp.local`` runs them in this environment.
"""

PIPELINE_IMAGE = "us-docker.pkg.dev/your-project/beer-pipeline/beer-pipeline:0.1.0"

# The serving image (docker/Dockerfile.serving) that the upload step registers by default.
SERVING_IMAGE = "us-docker.pkg.dev/your-project/beer-pipeline/beer-serving:0.1.0"

PLACEHOLDER_PROJECT = "your-project"
"""The project in ``PIPELINE_IMAGE``: docker/build.sh's default, standing in for the user's own."""


def is_placeholder_image(uri: str) -> bool:
    """Whether ``uri`` is still the stand-in image, which no registry holds: a job that runs it
    fails to pull its first step."""
    return f"/{PLACEHOLDER_PROJECT}/" in uri


def serving_image_beside(pipeline_image: str) -> str:
    """The serving image that docker/build.sh pushes beside ``pipeline_image`` (same registry,
    repository and tag, named ``beer-serving``)."""
    repository, _, name_and_tag = pipeline_image.rpartition("/")
    tag = name_and_tag.partition(":")[2]
    return f"{repository}/beer-serving:{tag}" if tag else f"{repository}/beer-serving"
