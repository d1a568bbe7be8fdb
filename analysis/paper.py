"""The paper's published numbers, as data (Khosla et al., Supervised Contrastive Learning, NeurIPS 2020;
summarised in shared/PAPER.md), so a report can put them beside a study's own.

Every number is as published; methods use the toolkit's names (supcon, ce, simclr; `max_margin` has no
counterpart in the toolkit). Top-1 and mCE values are percentages, ECE values fractions.
"""

from __future__ import annotations

import math

SOURCE = "Khosla et al., Supervised Contrastive Learning, NeurIPS 2020 (arXiv 2004.11362 v6)"

# Table 2: top-1 accuracy, ResNet-50.
TABLE2_MODEL = "resnet50"
TABLE2_TOP1: dict[str, dict[str, float]] = {
    "cifar10": {"simclr": 93.6, "ce": 95.0, "max_margin": 92.4, "supcon": 96.0},
    "cifar100": {"simclr": 70.7, "ce": 75.3, "max_margin": 70.5, "supcon": 76.5},
    "imagenet": {"simclr": 70.2, "ce": 78.2, "max_margin": 78.0, "supcon": 78.7},
}

# Contrastive pre-training epochs of the paper's results: 1000 on CIFAR (the authors' CIFAR-10 script,
# google-research supcon/scripts/supcon_cifar10_resnet50.sh --stage_1_epochs=1000), 350 for ResNet-50 on
# ImageNet (Sec. 4).
PRETRAIN_EPOCHS = {"CIFAR": 1000, "ImageNet": 350}


def pretrain_epochs(dataset: str) -> tuple[int, str]:
    """The paper's contrastive pre-training epochs for a dataset name and the dataset they were for
    (CIFAR's for cifar10/cifar100, ImageNet's for anything else)."""
    where = "CIFAR" if dataset.startswith("cifar") else "ImageNet"
    return PRETRAIN_EPOCHS[where], where


# Fig. 3 (left): ImageNet-C mCE and relative mCE, AlexNet = 100. Keys: (method, model); method None for
# the plain ResNet-18 reference.
IMAGENET_C_MCE: dict[tuple[str | None, str], dict[str, float]] = {
    (None, "resnet18"): {"mCE": 84.7, "relative_mCE": 103.9},
    ("ce", "resnet50"): {"mCE": 68.6, "relative_mCE": 96.2},
    ("supcon", "resnet50"): {"mCE": 67.2, "relative_mCE": 94.6},
    ("ce", "resnet200"): {"mCE": 52.4, "relative_mCE": 69.1},
    ("supcon", "resnet200"): {"mCE": 50.6, "relative_mCE": 66.5},
}

# Supp. Table 6: top-1 by ImageNet-C severity (0 = clean), averaged over corruptions.
SEVERITY_TOP1: dict[tuple[str, str], tuple[float, ...]] = {
    ("ce", "resnet50"): (78.24, 65.06, 54.96, 47.64, 35.93, 25.38),
    ("supcon", "resnet50"): (78.81, 65.39, 55.55, 48.64, 37.27, 26.92),
    ("ce", "resnet200"): (80.81, 72.89, 65.28, 60.55, 52.00, 43.11),
    ("supcon", "resnet200"): (81.38, 73.29, 66.16, 61.80, 54.01, 45.71),
}
# Supp. Table 6: expected calibration error by severity (0 = clean), ResNet-50.
SEVERITY_ECE: dict[tuple[str, str], tuple[float, ...]] = {
    ("ce", "resnet50"): (0.039, 0.033, 0.032, 0.047, 0.072, 0.098),
    ("supcon", "resnet50"): (0.024, 0.026, 0.034, 0.048, 0.071, 0.100),
}

# Supp. Table 8: SupCon R50 AutoAugment top-1 by (contrastive-stage, linear-stage) optimizer.
OPTIMIZER_PAIRS: dict[tuple[str, str], float] = {
    ("lars", "lars"): 78.2, ("lars", "rmsprop"): 78.7, ("lars", "sgd"): 77.6,
    ("rmsprop", "lars"): 77.4, ("rmsprop", "rmsprop"): 77.8, ("rmsprop", "sgd"): 76.9,
    ("sgd", "lars"): 77.7, ("sgd", "rmsprop"): 76.1, ("sgd", "sgd"): 77.7,
}
# Supp. Table 9: SupCon top-1 by (contrastive-stage, linear-stage) augmentation.
AUGMENTATION_PAIRS: dict[tuple[str, str], float] = {
    ("autoaugment", "autoaugment"): 78.6, ("autoaugment", "randaugment"): 78.1,
    ("autoaugment", "simaugment"): 75.4, ("autoaugment", "stacked_randaugment"): 77.4,
    ("simaugment", "autoaugment"): 76.1, ("simaugment", "randaugment"): 75.9,
    ("simaugment", "simaugment"): 77.9, ("simaugment", "stacked_randaugment"): 76.4,
    ("randaugment", "autoaugment"): 78.3, ("randaugment", "randaugment"): 78.4,
    ("randaugment", "simaugment"): 76.3, ("randaugment", "stacked_randaugment"): 75.8,
    ("stacked_randaugment", "autoaugment"): 78.1, ("stacked_randaugment", "randaugment"): 78.2,
    ("stacked_randaugment", "simaugment"): 77.9, ("stacked_randaugment", "stacked_randaugment"): 75.9,
}

TEMPERATURE = 0.1  # the paper's temperature for every result


def dataset_key(dataset: str) -> str | None:
    """The paper's name for a toolkit dataset (cifar10, cifar100, imagenet), or None when the paper has
    no numbers for it. An `imagefolder:` dataset counts as ImageNet when its path names ImageNet."""
    name = str(dataset).lower()
    if name in ("cifar10", "cifar100"):
        return name
    if name == "imagenet" or (name.startswith("imagefolder:") and "imagenet" in name):
        return "imagenet"
    return None


def table2_top1(dataset: str) -> dict[str, float] | None:
    """Table 2's top-1 per method for a dataset, or None when the paper reports none for it."""
    key = dataset_key(dataset)
    return dict(TABLE2_TOP1[key]) if key else None


def imagenet_c_reference(method: str, model: str = "resnet50") -> dict[str, float] | None:
    """The paper's ImageNet-C mCE and relative mCE for a method and model, or None."""
    return IMAGENET_C_MCE.get((method, model))


def setting_differences(study: dict) -> list[str]:
    """How a study's setting differs from Table 2's (ResNet-50 at full width, 1000 CIFAR / 350 ImageNet
    epochs); empty when it matches in those respects."""
    differences = []
    model, width = study.get("model"), study.get("width")
    if model and model != TABLE2_MODEL:
        differences.append(f"model {model} (paper: {TABLE2_MODEL})")
    if isinstance(width, (int, float)) and not math.isclose(float(width), 1.0):
        differences.append(f"width {width:g} (paper: 1)")
    epochs = study.get("epochs")
    paper_epochs = 350 if dataset_key(str(study.get("dataset", ""))) == "imagenet" else 1000
    if isinstance(epochs, (int, float)) and epochs < paper_epochs:
        differences.append(f"{epochs:g} epochs (paper: {paper_epochs} for SupCon)")
    return differences
