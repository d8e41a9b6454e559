"""Manufacturing execution system for absorbable implantable medical devices."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mes")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
