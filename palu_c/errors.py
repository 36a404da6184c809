"""Exception and warning classes of palu_c."""

from __future__ import annotations

import numpy as np


class WhiteningWarning(UserWarning):
    """The calibration Gram matrix was not positive definite; a diagonal shift was added (see the message)."""


class KernelSpeedWarning(UserWarning):
    """Decode attention over this compressed cache will be slower on CUDA than attention over the full cache: a
    layer's ranks are outside what the fast decode kernels take (it runs the general kernel, at the first decode
    step), or ``compress_kv`` was given a group size whose measured decode time is (see the message)."""


LinAlgError = np.linalg.LinAlgError
