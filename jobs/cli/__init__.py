"""`sfp-label`: the command line (`main`), and the exit codes it alone decides."""

from .main import main

__all__ = ["main"]
