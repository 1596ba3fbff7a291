"""Using a trained model: restore it from a workdir, sample, and score the samples. Needs no training data."""
