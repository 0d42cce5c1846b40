"""The network, its training, and prediction (with the one image preprocessing)."""
