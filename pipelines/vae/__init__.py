"""The greyscale AutoencoderKL: network (`model`), objective, trainer."""
