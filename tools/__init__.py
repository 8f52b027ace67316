"""Tools beside the library: the stand-in data generator, the demo, model comparisons."""
