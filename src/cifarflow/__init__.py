"""cifarflow: an image dataset from a bucket to an evaluated model, on a laptop or on Kubernetes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cifarflow")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
