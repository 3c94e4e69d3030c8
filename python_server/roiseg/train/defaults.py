"""Defaults of a new model's card, importable without torch (the CLI shows them)."""

#: A new model's card when no model is fine-tuned (`roiseg train`): µm/px, tile size, overlap
#: and inference batch size.
NEW_MODEL_MPP, NEW_MODEL_TILE_SIZE, NEW_MODEL_OVERLAP, NEW_MODEL_BATCH_SIZE = 1.0, 512, 128, 4
