"""Making models smaller and faster: quantization (``quantize``), pruning (``unstructured``,
``structured``, with the calibration data they share in ``calibration``), and the
`lmforge compress` report that measures every variant side by side (``report``). Distillation
trains through the engine: see `lmforge distill`."""
