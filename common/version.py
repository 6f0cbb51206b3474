"""The one version number of Voxa: the Python package, the tags of its images and the Helm chart.

pyproject.toml reads it from here (`[tool.setuptools.dynamic]`), the operator's default images are
tagged with it, and the chart generator writes it into Chart.yaml, so a release changes one line.
"""

from __future__ import annotations

VERSION = "0.1.0"
IMAGE_REGISTRY = "ghcr.io/voxa-dev"
"""Where Voxa's images are published; `make images REGISTRY=...` builds them under another name."""


def image(name: str, registry: str = IMAGE_REGISTRY) -> str:
    """The reference of one of Voxa's images (voxa, stunnerd, redis) at this version."""
    return f"{registry}/{name}:{VERSION}"
