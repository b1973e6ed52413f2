import gzip
import pickle

import numpy as np
import pytest
import torch

from wasserstein_attacks.data import (
    ImageDataset,
    load_cifar10,
    load_dataset,
    load_mnist,
    rescale_mass,
    rotate,
    shift,
    synthetic_dataset,
)

# ---------------------------------------------------------------------------- MNIST from the package


def test_mnist_package_shapes_and_canonical_order():
    test = load_dataset("mnist", "test")
    assert len(test) == 10_000 and test.images.shape == (10_000, 1, 28, 28)
    assert test.images.dtype == torch.float32 and test.labels.dtype == torch.int64
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert test.images.min() == 0 and test.images.max() == 1
    assert test.num_classes == 10 and test.name == "mnist/test"
    assert torch.bincount(test.labels, minlength=10).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    train = load_dataset("mnist", "train")
    assert train.images.shape == (60_000, 1, 28, 28)
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]


def test_mnist_loads_are_independent_copies():
    a = load_mnist("test").subset(3)
    a.images.mul_(0)  # mutating one load must not reach the cache
    b = load_mnist("test").subset(3)
    assert b.images.sum() > 0


def test_subset_and_batches():
    ds = load_dataset("mnist", "test", n=10)
    assert len(ds) == 10 and ds.labels.tolist()[:5] == [7, 2, 1, 0, 4]
    batches = list(ds.batches(4))
    assert [len(b.labels) for b in batches] == [4, 4, 2]
    torch.testing.assert_close(torch.cat([b.images for b in batches]), ds.images)
    assert torch.cat([b.indices for b in batches]).tolist() == list(range(10))
    s1 = [b.indices.tolist() for b in ds.batches(4, shuffle=True, seed=3)]
    s2 = [b.indices.tolist() for b in ds.batches(4, shuffle=True, seed=3)]
    s3 = [b.indices.tolist() for b in ds.batches(4, shuffle=True, seed=4)]
    assert s1 == s2 and s1 != s3
    assert sorted(sum(s1, [])) == list(range(10))
    b = next(iter(ds.batches(4, shuffle=True, seed=3)))
    torch.testing.assert_close(b.images, ds.images[b.indices])
    torch.testing.assert_close(b.labels, ds.labels[b.indices])
    with pytest.raises(ValueError, match="seed"):
        next(ds.batches(4, shuffle=True))
    with pytest.raises(ValueError, match="batch_size"):
        next(ds.batches(0))
    with pytest.raises(ValueError, match="n must"):
        ds.subset(-1)


def test_dataset_validation():
    with pytest.raises(ValueError, match="images"):
        ImageDataset(torch.rand(2, 4, 4), torch.zeros(2, dtype=torch.long), "x", 2)
    with pytest.raises(ValueError, match="images"):
        ImageDataset(torch.full((2, 1, 4, 4), float("nan")), torch.zeros(2, dtype=torch.long), "x", 2)
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(torch.rand(2, 1, 4, 4), torch.zeros(3, dtype=torch.long), "x", 2)
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(torch.rand(2, 1, 4, 4), torch.tensor([0, 2]), "x", 2)


def test_load_dataset_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="name"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "val")
    with pytest.raises(FileNotFoundError, match="IDX"):
        load_dataset("mnist", root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_dataset("cifar10", root=tmp_path)


# ---------------------------------------------------------------------------- MNIST from a user's folder


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _tiny_mnist(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_folder(tmp_path, compress):
    files = {}
    for split, stems, n in (
        ("train", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), 7),
        ("test", ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"), 5),
    ):
        img, lab = _tiny_mnist(n, seed=n)
        files[split] = (img, lab)
        for stem, arr in zip(stems, (img, lab), strict=True):
            data = _idx_bytes(arr)
            if compress:
                (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (tmp_path / stem).write_bytes(data)
    for split, (img, lab) in files.items():
        ds = load_dataset("mnist", split, root=tmp_path)
        assert ds.images.shape == (len(lab), 1, 28, 28) and ds.images.dtype == torch.float32
        np.testing.assert_allclose(ds.images[:, 0].numpy() * 255, img.astype(np.float32), atol=1e-4)
        np.testing.assert_array_equal(ds.labels.numpy(), lab.astype(np.int64))


def test_mnist_idx_truncated_file_is_rejected(tmp_path):
    img, lab = _tiny_mnist(3, 0)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(img)[:-5])
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(lab))
    with pytest.raises(ValueError, match="header announces"):
        load_dataset("mnist", "test", root=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + _idx_bytes(img)[4:])
    with pytest.raises(ValueError, match="unsigned bytes"):
        load_dataset("mnist", "test", root=tmp_path)


@pytest.mark.parametrize("keras_names", [False, True])
def test_mnist_npz(tmp_path, keras_names):
    tr_img, tr_lab = _tiny_mnist(6, 1)
    te_img, te_lab = _tiny_mnist(4, 2)
    names = (
        ("x_train", "y_train", "x_test", "y_test")
        if keras_names
        else ("train_images", "train_labels", "test_images", "test_labels")
    )
    np.savez(tmp_path / "mnist.npz", **dict(zip(names, (tr_img, tr_lab, te_img, te_lab), strict=True)))
    for root in (tmp_path, tmp_path / "mnist.npz"):
        ds = load_dataset("mnist", "test", root=root)
        np.testing.assert_array_equal(ds.labels.numpy(), te_lab.astype(np.int64))
        np.testing.assert_allclose(ds.images[:, 0].numpy(), te_img / 255.0, atol=1e-6)
    assert len(load_dataset("mnist", "train", root=tmp_path, n=2)) == 2


def test_mnist_root_from_environment(tmp_path, monkeypatch):
    te_img, te_lab = _tiny_mnist(3, 5)
    np.savez(tmp_path / "mine.npz", test_images=te_img, test_labels=te_lab)
    monkeypatch.setenv("WATTACK_MNIST_ROOT", str(tmp_path / "mine.npz"))
    ds = load_dataset("mnist", "test")
    assert len(ds) == 3
    np.testing.assert_array_equal(ds.labels.numpy(), te_lab.astype(np.int64))
    # An explicit root wins over the environment.
    np.savez(tmp_path / "other.npz", test_images=te_img[:2], test_labels=te_lab[:2])
    assert len(load_dataset("mnist", "test", root=tmp_path / "other.npz")) == 2


def test_mnist_npz_wrong_keys_and_labels(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="test_images"):
        load_dataset("mnist", "test", root=tmp_path / "a.npz")
    img, _ = _tiny_mnist(2, 0)
    np.savez(tmp_path / "b.npz", test_images=img, test_labels=np.array([0, 10]))
    with pytest.raises(ValueError, match="labels"):
        load_dataset("mnist", "test", root=tmp_path / "b.npz")


# ---------------------------------------------------------------------------- CIFAR-10 folder


def _write_cifar(folder, per_batch=4, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    b"batch_label": name.encode(),
                    b"data": data,
                    b"labels": labels,
                    b"filenames": [b"x.png"] * per_batch,
                },
                f,
                protocol=2,
            )
        out[name] = (data, labels)
    return out


def test_cifar_folder(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        test = load_dataset("cifar10", "test", root=root)
        data, labels = written["test_batch"]
        assert test.images.shape == (4, 3, 32, 32) and test.name == "cifar10/test"
        assert test.labels.tolist() == labels
        # Row layout: 1024 red, then green, then blue values, each row-major.
        np.testing.assert_allclose(
            test.images[1, 1, 2, 3].item() * 255, data[1, 1024 + 2 * 32 + 3], atol=1e-4
        )
    train = load_cifar10("train", root=tmp_path)
    assert train.images.shape == (20, 3, 32, 32)
    assert train.labels.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar_refuses_code_in_pickles(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Evil()]}, f)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        load_cifar10("test", root=tmp_path)
    assert "must never run" not in capsys.readouterr().out


def test_cifar_wrong_shapes(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"uint8 array \[n, 3072\]"):
        load_cifar10("test", root=tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match="dict"):
        load_cifar10("test", root=tmp_path)


# ---------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_configurable():
    a = synthetic_dataset(64, channels=3, height=9, width=13, num_classes=5, seed=7)
    b = load_dataset("synthetic", "train", n=64, channels=3, height=9, width=13, num_classes=5, seed=7)
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    assert torch.equal(a.labels, b.labels)
    assert a.images.shape == (64, 3, 9, 13) and a.num_classes == 5
    assert a.images.min() >= 0 and a.images.max() <= 1
    c = synthetic_dataset(64, channels=3, height=9, width=13, num_classes=5, seed=7, split="test")
    assert not torch.equal(a.images, c.images)
    assert set(a.labels.tolist()) == set(range(5))


def test_synthetic_classes_are_separable_by_blob_position():
    # The class mean images differ where the blobs sit: a nearest-mean classifier already works.
    train, test = synthetic_dataset(400, seed=0), synthetic_dataset(200, seed=0, split="test")
    means = torch.stack([train.images[train.labels == k].mean(0) for k in range(train.num_classes)])
    d = ((test.images[:, None] - means[None]) ** 2).flatten(2).sum(-1)
    assert (d.argmin(1) == test.labels).double().mean() > 0.95


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="height"):
        synthetic_dataset(4, height=2)
    with pytest.raises(ValueError, match="root"):
        load_dataset("synthetic", root="x")
    with pytest.raises(ValueError, match="options"):
        load_dataset("mnist", channels=3)


# ---------------------------------------------------------------------------- natural transformations


def test_shift_moves_pixels_and_fills_zero():
    x = torch.arange(1, 17, dtype=torch.float32).reshape(1, 1, 4, 4) / 16
    y = shift(x, 0, 1)
    torch.testing.assert_close(y[..., 1:], x[..., :-1])
    assert y[..., 0].abs().sum() == 0
    z = shift(x, -1, 0)
    torch.testing.assert_close(z[..., :-1, :], x[..., 1:, :])
    assert z[..., -1, :].abs().sum() == 0
    with pytest.raises(ValueError, match="dy, dx"):
        shift(x, 0, 4)


def test_shift_keeps_mnist_mass():
    x = load_dataset("mnist", "test", n=50).images
    y = shift(x, 0, 1)
    torch.testing.assert_close(y.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=1e-6, atol=0)


def test_rotate_90_degrees_matches_rot90():
    x = torch.rand(2, 3, 6, 6)
    torch.testing.assert_close(
        rotate(x, 90, rescale=False), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(rotate(x, 0, rescale=False), x, atol=1e-6, rtol=0)


def test_rotate_rescales_mass_per_channel_and_stays_in_box():
    x = (
        load_dataset("mnist", "test", n=20).images.repeat(1, 2, 1, 1)
        * torch.tensor([1.0, 0.5])[None, :, None, None]
    )
    y = rotate(x, 12)
    torch.testing.assert_close(y.double().sum((2, 3)), x.double().sum((2, 3)), rtol=1e-6, atol=0)
    assert y.min() >= 0 and y.max() <= 1
    assert (y - x).abs().max() > 0.1  # it did rotate


def test_rescale_mass_saturates_at_one():
    y = torch.tensor([[[[1.0, 0.5, 0.25, 0.0]]]])
    ref = torch.tensor([[[[0.5, 0.5, 0.5, 0.5]]]])  # mass 2
    out = rescale_mass(y, ref)
    torch.testing.assert_close(out.sum(), torch.tensor(2.0))
    assert out.max() <= 1 and out[0, 0, 0, 3] == 0
    # 1 stays saturated; the rest scales by s with 0.5 s + 0.25 s = 1.
    torch.testing.assert_close(out[0, 0, 0, :3], torch.tensor([1.0, 2 / 3, 1 / 3]))
    with pytest.raises(ValueError, match="hold"):
        rescale_mass(y, torch.full_like(y, 0.9))
