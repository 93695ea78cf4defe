"""Making models smaller and faster: quantization (:mod:`.quantize`)."""
