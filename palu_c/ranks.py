"""placeholder: its owner lands the real module."""
def allocate_ranks(*a, **k): raise NotImplementedError
