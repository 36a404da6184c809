"""placeholder: its owner lands the real module."""
class QuantizedTensor: pass
def quantize(*a, **k): raise NotImplementedError
