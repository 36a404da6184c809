"""Exception and warning classes of palu_c."""

from __future__ import annotations

import numpy as np


class WhiteningWarning(UserWarning):
    """The calibration Gram matrix was not positive definite; a diagonal shift was added (see the message)."""


class KernelSpeedWarning(UserWarning):
    """A compressed layer's ranks are outside what the fast CUDA decode kernels take, so its decode steps run the
    general tensor-core kernel, which is slower than full-cache attention at long context (see the message)."""


LinAlgError = np.linalg.LinAlgError
