"""The file listing of an ImageFolder-style data set, as torchvision's `ImageFolder` makes it."""

from __future__ import annotations

import os


def image_samples(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """root/<class>/<image>.jpg -> (the class names sorted, (path, class index) of every image in order)."""
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
    samples = [
        (os.path.join(root, c, f), i)
        for i, c in enumerate(classes)
        for f in sorted(os.listdir(os.path.join(root, c)))
        if f.endswith(".jpg")
    ]
    return classes, samples
