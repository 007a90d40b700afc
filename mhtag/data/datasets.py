"""Datasets of image files: for training (with targets) and for embedding (unreadable files reported, not fatal)."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler, get_worker_info

from mhtag.core.errors import ImageError
from mhtag.data.images import FileFacts, content_hash, decode_image, read_image_bytes, upright_size
from mhtag.data.transforms import Letterbox


def _draft_size(transform) -> tuple[int, int] | None:
    first = transform.transforms[0]
    return (first.size[1], first.size[0]) if isinstance(first, Letterbox) else None


class ImageDataset(Dataset):
    """Images from files, each with its targets (if any); decodes JPEGs at reduced scale where possible."""

    def __init__(self, files: list[str], transform, targets: dict[str, np.ndarray] | None = None):
        self.files = files
        self.transform = transform
        self.targets = targets or {}
        self.draft = _draft_size(transform)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        img = decode_image(read_image_bytes(self.files[i]), self.files[i], self.draft)
        return self.transform(img), {k: torch.as_tensor(v[i]) for k, v in self.targets.items()}


class AugmentedDataset(ImageDataset):
    """Training images whose random augmentation is drawn from (seed, epoch, index) alone, so a run gives the same
    model whatever the number of decoding processes, whether they persist across epochs, and across a resume.
    Items are keyed `(epoch, index)`, as `EpochSampler` yields them."""

    def __init__(self, files: list[str], transform, targets: dict[str, np.ndarray] | None = None, seed: int = 0):
        super().__init__(files, transform, targets)
        self.seed = seed

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        item_seed = int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1, np.uint64)[0])
        # in the training process, leave its stream (dropout) as it was; a decoding process's serves nothing else
        in_worker = get_worker_info() is not None
        with nullcontext() if in_worker else torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(item_seed)
            return super().__getitem__(i)


class EpochSampler(Sampler):
    """Wraps an index sampler to yield `(epoch, index)` keys for `AugmentedDataset`; `set_epoch` each epoch."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):  # DistributedSampler's own shuffle
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class SafeImageDataset(ImageDataset):
    """For embedding: item i is (tensor, i, FileFacts) or (None, i, reason) for an unusable file.

    A file is read once: its bytes give the content hash, and the decoded image its upright size."""

    def __getitem__(self, i: int):
        try:
            data = read_image_bytes(self.files[i])
            img = decode_image(data, self.files[i], self.draft)
            size = _full_size(data, img, self.draft, self.files[i])
            facts = FileFacts(content_hash(data), len(data), *size)
            return self.transform(img), i, facts
        except ImageError as exc:
            return None, i, exc.reason


def _full_size(data: bytes, img: Image.Image, draft: tuple[int, int] | None, name: str) -> tuple[int, int]:
    """A draft-mode JPEG decodes smaller than it is; then the upright full size comes from its header."""
    return img.size if draft is None else upright_size(data, name)


def collate_safe(batch):
    """-> (stacked images or None, indices of the good ones, their FileFacts, [(index, reason)] of the bad)."""
    good = [(x, i, facts) for x, i, facts in batch if x is not None]
    bad = [(i, reason) for x, i, reason in batch if x is None]
    xs = torch.stack([x for x, _, _ in good]) if good else None
    return xs, [i for _, i, _ in good], [f for _, _, f in good], bad


class ArrayDataset(Dataset):
    """Rows of a feature matrix with their targets."""

    def __init__(self, x: np.ndarray, targets: dict[str, np.ndarray]):
        self.x = torch.from_numpy(x)
        self.targets = {k: torch.from_numpy(v) for k, v in targets.items()}

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], {k: v[i] for k, v in self.targets.items()}

