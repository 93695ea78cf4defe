"""Making models smaller and faster: pruning (``prune``, ``structured``) and quantization,
with the calibration data they share (``calibration``)."""
