"""Rebalance an imbalanced image dataset with a class-conditional GAN, as a DVC pipeline."""
