"""Model definitions: built from a config with random weights; `vqclip.loading` fills them from checkpoints."""
