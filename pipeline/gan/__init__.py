"""The class-conditional GAN's training, used by the train stage alone.

- training.py: the GAN as a LightningModule (`ConditionalGAN`) and the sample grids of its generator
- data.py: its training images as a LightningDataModule (`TrainImages`), in memory or streamed
- losses.py: the pure maths: losses, penalties, regularisers and schedules
- augment.py: DiffAugment, the differentiable augmentations of real and fake images

This file imports nothing, so importing one of these modules does not run the others. Sampling a
trained generator is pipeline/sampler.py's, which needs none of them.
"""
