"""The version of ckptsync, in one place: the package metadata and the ``tool`` field of manifests read it."""

__version__ = "0.1.0"
