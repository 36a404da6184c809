"""Exception and warning classes of palu_c."""

from __future__ import annotations

import numpy as np


class WhiteningWarning(UserWarning):
    """The calibration Gram matrix was not positive definite; a diagonal shift was added (see the message)."""


LinAlgError = np.linalg.LinAlgError
