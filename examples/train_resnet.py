"""Train a torchvision network on the augmented dataset and print its balanced accuracy on the real test split.

Run from the repository root once data/augmented exists (`dvc repro merge`, or `dvc pull`):

    python examples/train_resnet.py [--arch resnet18] [--max-steps 3000] [--batch-size 64] [--num-workers 2]

The network is torchvision's, untrained, with the CIFAR-style stem for small images that it also has as
evaluate.classifier.arch (pipeline.nets.classifiers.torchvision_classifier). The data comes through
pipeline.datamodule.AugmentedDataModule: class-balanced draws from data/augmented for training, the
real val and test splits of data/prepared for validation and the final score.
"""

import argparse

import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torchvision import transforms as T

from pipeline.datamodule import AugmentedDataModule
from pipeline.metrics import balanced_accuracy
from pipeline.nets.classifiers import torchvision_classifier

TO_NETWORK = [T.ToTensor(), T.Normalize((0.5,), (0.5,))]  # [-1, 1], as the pipeline's networks see images


class Classifier(pl.LightningModule):
    def __init__(self, net: torch.nn.Module, lr: float):
        super().__init__()
        self.net, self.lr, self.predicted, self.truth = net, lr, [], []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = F.cross_entropy(self.net(images), labels)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):  # the test loop runs the same step
        images, labels = batch
        self.predicted.append(self.net(images).argmax(dim=1))
        self.truth.append(labels)

    test_step = validation_step

    def on_validation_epoch_end(self):
        self.log("val_balanced_accuracy", self.balanced_accuracy(), prog_bar=True)

    def on_test_epoch_end(self):
        self.score = self.balanced_accuracy()

    def balanced_accuracy(self) -> float:
        score = balanced_accuracy(torch.cat(self.truth).numpy(), torch.cat(self.predicted).numpy())
        self.predicted, self.truth = [], []
        return score

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=".", help="the repository (data/augmented and data/prepared below it)")
    parser.add_argument("--arch", default="resnet18", help="a torchvision classification model")
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    pl.seed_everything(0)
    augment = T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))  # no flips: they change digits
    data = AugmentedDataModule(
        args.root,
        train_transform=T.Compose([augment, *TO_NETWORK]),
        val_transform=T.Compose(TO_NETWORK),
        test_transform=T.Compose(TO_NETWORK),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    model = Classifier(torchvision_classifier(args.arch, data.image_size, data.channels, data.num_classes), args.lr)
    trainer = pl.Trainer(max_steps=args.max_steps, logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    print(
        f"{args.arch}: balanced accuracy {model.score:.3f} on the real test split after {trainer.global_step} updates"
    )


if __name__ == "__main__":
    main()
