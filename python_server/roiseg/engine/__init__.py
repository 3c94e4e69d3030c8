"""The segmentation engine: model cards and checkpoints, tiled inference, the one pipeline
that validates and runs a request, post-processing and vectorisation."""
