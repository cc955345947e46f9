"""Special token ids, fixed for the whole package (tokenizers, pipeline, model, decoding, export)."""

PAD_ID = 0
UNK_ID = 1
START_ID = 2
END_ID = 3
