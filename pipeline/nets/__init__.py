"""The networks: class-conditional generators, a projection discriminator and a small classifier.

All networks take and give images as float tensors in [-1, 1], NxCxHxW; `to_unit_range` and
`to_uint8` convert from and to the uint8 tensors that stages keep in memory. The GAN's networks adapt
to any power-of-two image size from 16 to 128 and to 1 or 3 channels.

- common.py: the image conversions and the supported sizes
- generators.py: the ResNet generator with class-conditional BatchNorm (per-class tables or BigGAN's), and
  `build_generator`, the generator of train.arch
- stylegan.py: the style-based generator (StyleGAN2)
- discriminators.py: the projection discriminator
- classifiers.py: the judge's and the downstream arms' classifier: small_cnn (SmallCNN), a torchvision model or
  your own
- saving.py: saving and loading (a plain state_dict beside a ModelMeta JSON file)
"""

from pipeline.nets.classifiers import (
    SmallCNN,
    build_classifier,
    check_classifier,
    classifier_name,
    logits_and_features,
    predict,
    predict_batches,
    predict_labels,
)
from pipeline.nets.common import SUPPORTED_SIZES, check_image_size, to_uint8, to_unit_range
from pipeline.nets.discriminators import Discriminator
from pipeline.nets.generators import ConditionalBatchNorm2d, Generator, build_generator
from pipeline.nets.saving import load_generator, load_judge, load_model, save_model, weights_hash
from pipeline.nets.stylegan import StyleGenerator

__all__ = [
    "SUPPORTED_SIZES",
    "ConditionalBatchNorm2d",
    "Discriminator",
    "Generator",
    "SmallCNN",
    "StyleGenerator",
    "build_classifier",
    "build_generator",
    "check_classifier",
    "check_image_size",
    "classifier_name",
    "load_generator",
    "load_judge",
    "load_model",
    "logits_and_features",
    "predict",
    "predict_batches",
    "predict_labels",
    "save_model",
    "to_uint8",
    "to_unit_range",
    "weights_hash",
]
