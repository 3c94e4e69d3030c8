"""roiseg: segment QuPath regions of interest into tissue-class polygons over gRPC."""

__version__ = "0.1.0"

#: Version of the roiseg.v1 gRPC contract this package speaks (see protos/roiseg/v1).
CONTRACT_MAJOR = 1
CONTRACT_MINOR = 4
