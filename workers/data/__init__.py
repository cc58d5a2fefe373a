"""Datasets for the kernels: every dataset is an `ImageSet` of (float C×H×W in [0,1], int label).

registry: the loader of each catalog dataset name (LOADERS), loading a split by name; disk,
renofeation, embedded: where splits come from; transforms: resize and the augmentation recipes (RECIPES);
loaders: subsets and batch loaders; ood: OOD sets.
In-memory sets keep one uint8/float tensor so that loaders fetch and augment whole batches at once
(the same augmentation family as REFERENCE C, drawn per image, vectorised per batch), on the training
device when it is not the CPU (ImageSet.on; the random draws stay on the CPU generator).
"""

from workers.data.embedded import generate_synthetic, synthetic_classes
from workers.data.imageset import ImageSet
from workers.data.loaders import eval_indices, make_eval_loader, make_train_loader, subset_indices
from workers.data.ood import CORRUPTIONS, load_ood
from workers.data.registry import DATASET_NAMES, LOADERS, PATTERN_LOADERS, load_split, transform_recipe
from workers.data.renofeation import RENOFEATION_SETS
from workers.data.transforms import RECIPES, augment_batch, random_resized_crop_box

__all__ = [
    "CORRUPTIONS",
    "DATASET_NAMES",
    "LOADERS",
    "PATTERN_LOADERS",
    "RECIPES",
    "RENOFEATION_SETS",
    "ImageSet",
    "augment_batch",
    "eval_indices",
    "generate_synthetic",
    "load_ood",
    "load_split",
    "make_eval_loader",
    "make_train_loader",
    "random_resized_crop_box",
    "subset_indices",
    "synthetic_classes",
    "transform_recipe",
]
