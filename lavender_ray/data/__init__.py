"""Data: the synthetic data set, readers for the formats users bring, and the rejects output."""
