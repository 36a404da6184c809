"""placeholder: its owner lands the real module."""
def hadamard(*a, **k): raise NotImplementedError
def hadamard_matrix(*a, **k): raise NotImplementedError
