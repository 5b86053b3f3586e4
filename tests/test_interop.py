"""A user's torch Dataset or DataLoader (torchvision's datasets) trains through pyro_vae.train,
with the same numbers as the equivalent tensor."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from torch.utils.data import Dataset as TorchDataset

import pyro_vae
from pyro_vae import DataError, tensor_from_torch_data
from pyro_vae.data import torch_dataset
from pyro_vae.training import RunDir

SIDE = 28


class FakeVision(TorchDataset):
    """Like a torchvision dataset: (image, label), the image a uint8 tensor [1, H, W] (as
    ToTensor's input would be, undivided), a numpy array [H, W] or a PIL image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, kind: str = "tensor"):
        self.images, self.labels, self.kind = images, labels, kind

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = self.images[i]
        if self.kind == "tensor":
            item = image.unsqueeze(0)
        elif self.kind == "numpy":
            item = image.numpy()
        else:
            from PIL import Image

            item = Image.fromarray(image.numpy())
        return item, int(self.labels[i])


def grey_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, SIDE, SIDE), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, 10, (n,), generator=g)


@pytest.fixture
def images():
    return grey_images(60, 0), grey_images(20, 1)


def numbers(rows):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


SETTINGS = dict(epochs=2, batch_size=20, lr=0.01, progress=False, plots=False)


def train_run(data, run_dir, test=None) -> RunDir:
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE.mlp(x_dim=SIDE * SIDE, latent_dim=2, hidden_dims=[8])
    pyro_vae.train(vae, data, run_dir, test=test, **SETTINGS)
    return RunDir(run_dir)


def same_run(a: RunDir, b: RunDir) -> None:
    assert numbers(a.metrics()) == numbers(b.metrics())
    assert a.metrics_path.read_text().count("\n") == b.metrics_path.read_text().count("\n")
    sa, sb = a.load_checkpoint(), b.load_checkpoint()
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    keep = ("test_elbo", "train_elbo", "steps", "samples")
    assert {k: a.summary()[k] for k in keep} == {k: b.summary()[k] for k in keep}
    assert a.config()["dataset"] == b.config()["dataset"]


@pytest.mark.parametrize("kind", ["tensor", "numpy", "pil"])
def test_a_torchvision_like_dataset_trains_as_its_tensor(images, tmp_path, one_thread, kind):
    if kind == "pil":
        pytest.importorskip("PIL")
    (x, labels), (x_test, test_labels) = images
    as_tensor = train_run(x.to(torch.float32) / 255, tmp_path / "t", x_test.to(torch.float32) / 255)
    as_dataset = train_run(
        FakeVision(x, labels, kind), tmp_path / "d", FakeVision(x_test, test_labels, kind)
    )
    same_run(as_tensor, as_dataset)
    meta = as_dataset.load_checkpoint()["meta"]
    assert meta["image_shape"] == [SIDE, SIDE] and meta["x_dim"] == SIDE * SIDE


def test_a_dataloader_trains_as_its_tensor(images, tmp_path, one_thread):
    (x, labels), (x_test, _) = images
    x, x_test = x.to(torch.float32) / 255, x_test.to(torch.float32) / 255
    as_tensor = train_run(x, tmp_path / "t", x_test)
    loader = DataLoader(TensorDataset(x, labels), batch_size=7)  # batches: [x, labels]
    test_loader = DataLoader(TensorDataset(x_test), batch_size=None)  # items one by one
    same_run(as_tensor, train_run(loader, tmp_path / "l", test_loader))
    # A loader without a test set: the training data are evaluated, as for a tensor alone.
    same_run(train_run(x, tmp_path / "t1"), train_run(DataLoader(x, batch_size=8), tmp_path / "l1"))


def test_the_conversion_keeps_order_labels_shapes_and_the_random_state(images):
    (x, labels), _ = images
    state = torch.get_rng_state()
    shuffled = tensor_from_torch_data(DataLoader(TensorDataset(x, labels), 9, shuffle=True))
    assert torch.equal(torch.get_rng_state(), state)  # a loader draws its seed from it
    flat = (x.to(torch.float32) / 255).reshape(len(x), -1)
    got = shuffled.reshape(len(x), -1)
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, flat.tolist()))

    dataset = torch_dataset(FakeVision(x, labels))
    assert dataset.image_shape == (SIDE, SIDE) and dataset.name == "tensor"
    assert torch.equal(dataset.train, flat) and torch.equal(dataset.test, flat)
    assert torch.equal(dataset.train_labels, labels) and "FakeVision" in dataset.source

    colour = torch.randint(0, 256, (5, 3, 4, 6), dtype=torch.uint8)
    d = torch_dataset(TensorDataset(colour))
    assert d.image_shape == (3, 4, 6) and torch.equal(d.train, colour.reshape(5, -1) / 255)
    floats = torch.rand(5, 3)
    assert torch.equal(tensor_from_torch_data(TensorDataset(floats)), floats)
    assert torch.equal(tensor_from_torch_data(TensorDataset(floats > 0.5)), (floats > 0.5).float())


def test_pil_colour_images_are_channel_first():
    Image = pytest.importorskip("PIL.Image")
    rgb = np.random.RandomState(0).randint(0, 256, (4, 5, 3)).astype(np.uint8)

    class Colour(TorchDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return Image.fromarray(rgb), 0

    x = tensor_from_torch_data(Colour())
    want = torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float() / 255
    assert x.shape == (2, 3, 4, 5) and torch.equal(x[1], want)
    assert torch_dataset(Colour()).image_shape == (3, 4, 5)


class Items(TorchDataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(3)
        yield {"image": torch.zeros(3)}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (Items(["abc", "def"]), r"data\[0\]='abc' is not allowed: expected a tensor, a numpy"),
        (
            Items([(torch.zeros(1, 5, 5), 0)] * 3 + [(torch.zeros(1, 5, 4), 1)]),
            r"data\[3\] has shape \[1, 5, 4\] but data\[0\] has \[1, 5, 5\]",
        ),
        (Stream(), r"data\[1\]=\{'image': tensor.*is not allowed"),
        (Items([np.array(["a", "b"])]), r"data\[0\]=array\(\['a', 'b'\].*dtype <U1"),
        (Items([]), "holds no items"),
        (
            DataLoader(Items([torch.zeros(2)] * 3 + [torch.zeros(3)] * 3), batch_size=3),
            r"data batch 1 has items of shape \[3\] but batch 0 has \[2\]",
        ),
    ],
)
def test_unusable_items_are_refused_naming_them(data, message):
    with pytest.raises(DataError, match=message):
        tensor_from_torch_data(data)


def test_train_refuses_bad_torch_data_naming_data_or_test(images, tmp_path):
    (x, labels), _ = images
    vae = pyro_vae.VAE.mlp(x_dim=SIDE * SIDE, latent_dim=2, hidden_dims=[8])
    good = FakeVision(x, labels)
    with pytest.raises(DataError, match=r"test\[1\]=None is not allowed"):
        pyro_vae.train(vae, good, tmp_path / "r", test=Items([torch.zeros(784), None]), **SETTINGS)
    with pytest.raises(DataError, match=r"data\[0\]='x'"):
        pyro_vae.train(vae, Items(["x"]), tmp_path / "r", **SETTINGS)
    with pytest.raises(DataError, match="test has 3 values per point"):
        pyro_vae.train(vae, good, tmp_path / "r", test=TensorDataset(torch.zeros(4, 3)), **SETTINGS)
    with pytest.raises(pyro_vae.ArgumentError, match="a torch Dataset/DataLoader"):
        pyro_vae.train(vae, [[0.0] * 784], tmp_path / "r", **SETTINGS)
