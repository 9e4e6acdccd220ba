"""flexunet.core: the TensorFlow-free bottom layer (config, model info, image I/O, tiling geometry,
masks, metrics, the comparator, errors). It imports nothing else of flexunet."""
