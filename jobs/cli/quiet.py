"""Keep the command's output for our user: what says nothing to them is filtered unless --verbose.

Warnings our own code caused are fixed where they arise; what remains comes
from our dependencies (deprecations inside Ray Data, PyTorch and friends) and
is the maintainers' concern, not the user's. Ray's and the workers' logs are
kept out of the driver's output by `pipeline.ensure_ray` itself.
"""

from __future__ import annotations

import logging
import warnings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers that speak at WARNING about their own internals (Ray's start-up, autoscaler hints).
_CHATTY_LOGGERS = ("ray", "ray.data", "filelock", "urllib3")


def quiet_warnings() -> None:
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
