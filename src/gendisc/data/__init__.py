"""Data: readers (torchvision.datasets, medmnist), the few-label protocol and the datamodule."""

from gendisc.data.datamodule import FewLabelDataModule
from gendisc.data.protocol import LabelSplit, split_labels

__all__ = ["FewLabelDataModule", "LabelSplit", "split_labels"]
