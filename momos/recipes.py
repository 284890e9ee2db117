"""Named training recipes: every profile value a published setup fixes, for each model and data set it trained.

``--recipe paper`` is the MoMos paper's official code (github.com/saintslab/MoMos). Its values go into the
run's ``config.json``; any flag given explicitly (``--epochs 3``) still overrides them.

Where we differ from the official code: the ViT trains at 32 pixels with the flip-crop augmentation here, not
at 224 pixels with RandAugment (timm's ViT and its transforms need torchvision, which does not import beside
the pinned torch), so its accuracy is not the paper's.
"""
from __future__ import annotations

from typing import Any

from .errors import MoMosError

#: the paper's schedule for every model (src/configs.py): cosine over 200 epochs, batch 128
_SCHEDULE = {"schedule": "cosine", "epochs": 200, "batch_size": 128}

#: model -> its optimiser in the official src/configs.py
PAPER_MODELS: dict[str, dict[str, Any]] = {
    # src/configs.py: MLP 4x256 ReLU, AdamW lr 3e-4, weight decay 1e-2, 32-pixel input
    "mlp": {**_SCHEDULE, "optimizer": "adamw", "lr": 3e-4, "weight_decay": 1e-2, "momentum": 0.0},
    # src/configs.py: ResNet20, SGD lr 0.1, momentum 0.9, weight decay 1e-4
    "resnet20": {**_SCHEDULE, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    # src/configs.py: ViT, AdamW lr 3e-4, weight decay 1e-2 (at 224 pixels there; 32 here, see above)
    "vit": {**_SCHEDULE, "optimizer": "adamw", "lr": 3e-4, "weight_decay": 1e-2, "momentum": 0.0},
}

#: data set -> its transforms in the official src/datasets.py
PAPER_DATA: dict[str, dict[str, Any]] = {
    # src/datasets.py: RandomHorizontalFlip, RandomCrop(32, padding=4), Normalize(CIFAR-10 mean, std)
    "cifar10": {"augment": "flip-crop", "normalize": "official", "image_size": 32},
    # src/datasets.py: Resize(32), Normalize(0.5, 0.5)
    "mnist": {"augment": "none", "normalize": "official", "image_size": 32},
    "fashion-mnist": {"augment": "none", "normalize": "official", "image_size": 32},
    # already resized and normalised by its loader, and validated on the test set as the official run
    "mnist-official": {"augment": "none"},
}

#: recipe name -> (model table, data table)
RECIPES: dict[str, tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]] = {
    "paper": (PAPER_MODELS, PAPER_DATA),
}


def values(recipe: str | None, model: str, data: str) -> dict[str, Any]:
    """The config values ``recipe`` sets for ``model`` on ``data`` ({} for no recipe); MoMosError for a model
    or data set the recipe does not cover."""
    if recipe is None:
        return {}
    if recipe not in RECIPES:
        raise MoMosError(f"unknown recipe '{recipe}'; available: {', '.join(RECIPES)}")
    by_model, by_data = RECIPES[recipe]
    if model not in by_model:
        raise MoMosError(f"--recipe {recipe} covers the models {', '.join(by_model)}; the paper did not train "
                         f"'{model}' (leave out --recipe to use its own profile)")
    if data not in by_data:
        raise MoMosError(f"--recipe {recipe} covers the data sets {', '.join(by_data)}; the paper did not train "
                         f"on '{data}' (leave out --recipe to use its own profile)")
    return {**by_model[model], **by_data[data]}


__all__ = ["RECIPES", "PAPER_MODELS", "PAPER_DATA", "values"]
