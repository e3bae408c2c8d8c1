"""The installed lineas-tl's version, for the top level and for what is saved or exported."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lineas-tl")
except PackageNotFoundError:  # running from a checkout that was not installed
    __version__ = "0.0.0+local"
