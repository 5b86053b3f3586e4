"""The datasets' files: their known checksums, where to download them, and verifying them.

A present file is verified against :data:`CHECKSUMS` before use and never overwritten: a
mismatch raises :class:`ChecksumError`. A missing file is downloaded with ``pooch`` from each
mirror in turn until one serves it with the right checksum (pooch streams it to a temporary
file beside the target and renames it only once the checksum matches, so no partial file is
ever left); when none does, or downloading is not allowed, :class:`DataNotFoundError` names
the directory, the files, every URL tried and why it failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pooch
import requests

from ..errors import ChecksumError, DataError, DataNotFoundError

log = logging.getLogger(__name__)

MIRROR_ENV = "PYRO_VAE_MIRROR"

# Base URLs, tried in order; a file's URL is the base followed by its name.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "frey_face": ("https://cs.nyu.edu/~roweis/data/",),
    "binarized_mnist": ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",),
    # torchvision's URL first, then the same files in Zalando's repository
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    "kmnist": ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    # the IWAE repository of Burda et al. (2015), through both of GitHub's addresses for its files
    "omniglot": (
        "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/",
        "https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/",
    ),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

# "algorithm:hexdigest" per file: keyed by the file name where it is unique across datasets, else
# by its path under the data directory (Fashion-MNIST and KMNIST reuse MNIST's file names; MNIST
# keeps the bare names). A module-level table so that tests can substitute the digests of small
# fake files instead of skipping verification.
CHECKSUMS: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
    "train-images-idx3-ubyte": "md5:6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "md5:a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "md5:2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "md5:27ae3e4e09519cfbb04c329615203637",
    "frey_rawface.mat": "md5:5aeb024d42b8a6091f30e5eb18c8a48d",
    "binarized_mnist_train.amat": (
        "sha256:ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"
    ),
    "binarized_mnist_valid.amat": (
        "sha256:1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"
    ),
    "binarized_mnist_test.amat": (
        "sha256:e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"
    ),
    # The npz is verified by the arrays it holds (sha256 of the unpacked uint8 bytes, C order),
    # not by its bytes: one written here from the .amat files may be compressed differently.
    "binarized_mnist.npz:train": (
        "sha256:43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a"
    ),
    "binarized_mnist.npz:valid": (
        "sha256:069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e"
    ),
    "binarized_mnist.npz:test": (
        "sha256:ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86"
    ),
    # Fashion-MNIST and KMNIST: the MD5s torchvision lists (torchvision/datasets/mnist.py); only
    # the gzip files, whose digests are published
    "FashionMNIST/raw/train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "FashionMNIST/raw/train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
    "FashionMNIST/raw/t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
    "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
    "KMNIST/raw/train-images-idx3-ubyte.gz": "md5:bdb82020997e1d708af4cf47b453dcf7",
    "KMNIST/raw/train-labels-idx1-ubyte.gz": "md5:e144d726b3acfaa3e44228e80efcd344",
    "KMNIST/raw/t10k-images-idx3-ubyte.gz": "md5:5c965bf0a639b31b8f53240b1b52f4d7",
    "KMNIST/raw/t10k-labels-idx1-ubyte.gz": "md5:7320c461ea6c1c855c0b718fb2a4b134",
    # Burda et al.'s 28x28 Omniglot. No MD5 from its authors; this one is the digest a public
    # loader (built on tfsnippet) checks its downloads of this very URL against.
    "chardata.mat": "md5:21ecaf34373511aa7691cf2e0802aa3d",
    # CIFAR-10, python version: the archive's and each batch's MD5, as torchvision lists them
    # (torchvision/datasets/cifar.py)
    "cifar-10-python.tar.gz": "md5:c58f30108f718f92721af3b95e74349a",
    "cifar-10-batches-py/data_batch_1": "md5:c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "md5:d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "md5:54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "md5:634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "md5:482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "md5:40351d587109b95175f43aff81a1287e",
}

DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


# --- checksums of present files ------------------------------------------------------------

# actual digest per (path, size, mtime, algorithm): verifying an unchanged file again is free
_digest_cache: dict[tuple[str, int, int, str], str] = {}


def _cache_key(path: Path, algorithm: str) -> tuple[str, int, int, str]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns, algorithm


def _file_digest(path: Path, algorithm: str) -> str:
    key = _cache_key(path, algorithm)
    if key not in _digest_cache:
        digest = hashlib.new(algorithm)
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        _digest_cache[key] = digest.hexdigest()
    return _digest_cache[key]


def verify_file(path: Path, key: str | None = None) -> None:
    """Raise :class:`ChecksumError` unless ``path`` matches its entry in :data:`CHECKSUMS`
    (``key``, by default the file name), :class:`DataError` if it cannot be read."""
    algorithm, expected = CHECKSUMS[path.name if key is None else key].split(":")
    try:
        actual = _file_digest(path, algorithm)
    except OSError as error:  # permissions, a directory of that name, an I/O error
        raise DataError(f"{path} cannot be read ({error})") from error
    if actual != expected:
        raise ChecksumError(_checksum_message(str(path), algorithm, expected, actual))


def verify_bytes(data: bytes, checksum_key: str, what: str) -> None:
    """Raise :class:`ChecksumError`, naming ``what``, unless ``data`` match
    ``CHECKSUMS[checksum_key]``."""
    algorithm, expected = CHECKSUMS[checksum_key].split(":")
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        raise ChecksumError(_checksum_message(what, algorithm, expected, actual))


def _checksum_message(what: str, algorithm: str, expected: str, actual: str) -> str:
    return (
        f"{what} does not match its known {algorithm}: expected {expected}, got {actual}. "
        "It is corrupt, truncated or a different file; delete it so it is downloaded again."
    )


# --- downloads -----------------------------------------------------------------------------


def mirror_list(bases: Sequence[str]) -> list[str]:
    """``bases`` with ``$PYRO_VAE_MIRROR``, when set, in front: the base URLs to try, in order."""
    env_mirror = os.environ.get(MIRROR_ENV)
    return ([env_mirror] if env_mirror else []) + list(bases)


def obtain(
    directory: Path,
    names: Sequence[str],
    bases: Sequence[str],
    download: bool,
    what: str,
    note: str = "",
    advice: str = "",
    checksum_prefix: str = "",
) -> list[Path]:
    """Download each of ``names`` into ``directory`` from the first of ``bases`` that serves it
    with the right checksum (``CHECKSUMS[checksum_prefix + name]``); return the files written.

    Raise :class:`DataNotFoundError` if not allowed (``download=False``: the message lists the
    URLs to get them from) or not possible (the message lists every URL tried and why it
    failed). ``what`` names the dataset, ``note`` adds a line about alternatives, ``advice``
    ends the message with how to point the caller at a directory that holds the files.
    """
    urls = {name: [base.rstrip("/") + "/" + name for base in bases] for name in names}
    with no_new_empty_directories(directory):
        return _obtain(directory, names, urls, download, what, note, advice, checksum_prefix)


def _obtain(
    directory: Path,
    names: Sequence[str],
    urls: dict[str, list[str]],
    download: bool,
    what: str,
    note: str,
    advice: str,
    checksum_prefix: str,
) -> list[Path]:
    failures: list[str] = []
    written: list[Path] = []
    if download:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a data_dir on a read-only disk, without permission
            failures.append(f"{directory} cannot be created ({error})")
        else:
            for name in names:
                key = checksum_prefix + name
                file = _download(directory / name, urls[name], failures, key)
                if file is None:
                    break
                written.append(file)
            else:
                return written

    lines = [f"{what} data not found in {directory}. Expected files:"]
    lines += [f"  {directory / name}" for name in names]
    if note:
        lines.append(note)
    if failures:
        lines.append("Download failed; tried:")
        lines += [f"  {failure}" for failure in failures]
    else:
        lines.append("download=False; get them from:")
        lines += [f"  {url}" for name in names for url in urls[name]]
    if advice:
        lines.append(advice)
    raise DataNotFoundError("\n".join(lines))


@contextlib.contextmanager
def no_new_empty_directories(directory: Path, depth: int = 3) -> Iterator[None]:
    """Leave no empty directory behind when the block raises: the directories it created
    and left empty, ``directory`` and its ancestors included, are removed (down to
    ``depth`` levels under ``directory``). A download that failed, or was refused, leaves
    the disk as it found it; files, and directories that existed before, are never touched.
    """
    directory = Path(directory).absolute()
    base = next(p for p in (directory, *directory.parents) if p.exists())
    before = _tree(directory, depth)
    try:
        yield
    except BaseException:
        new = sorted(_tree(directory, depth) - before, key=lambda p: len(p.parts), reverse=True)
        ancestors = [p for p in (directory, *directory.parents) if base in p.parents]
        for folder in [*new, *ancestors]:
            with contextlib.suppress(OSError):  # not empty (or already gone): kept
                folder.rmdir()
        raise


def _tree(directory: Path, depth: int) -> set[Path]:
    """``directory`` and the directories under it, ``depth`` levels down, that exist."""
    if not directory.is_dir():
        return set()
    found, level = {directory}, [directory]
    for _ in range(depth):
        level = [
            child
            for folder in level
            for child in _children(folder)
            if child.is_dir() and not child.is_symlink()
        ]
        found.update(level)
    return found


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:  # unreadable: nothing of ours to remove there
        return []


def _download(target: Path, urls: Sequence[str], failures: list[str], key: str) -> Path | None:
    """Download the first good copy among ``urls`` into ``target``, checked against
    ``CHECKSUMS[key]``; append why each failed."""
    known_hash = CHECKSUMS[key]
    for url in urls:
        log.info("downloading %s from %s", target.name, url)
        try:
            downloader = _downloader(url)
            with _quiet_pooch():
                pooch.retrieve(
                    url,
                    known_hash=known_hash,
                    fname=target.name,
                    path=target.parent,
                    downloader=downloader,
                )
        except Exception as error:  # whatever went wrong, the next mirror may serve it
            failure = f"{url}: {_why(error)}"
            log.warning("download failed: %s", failure)
            failures.append(failure)
            continue
        # pooch has just verified it: record the digest so that the check before use is free
        algorithm, expected = known_hash.split(":")
        _digest_cache[_cache_key(target, algorithm)] = expected
        return target
    return None


def _downloader(url: str) -> Callable[[str, str, object], object]:
    """pooch's downloader for ``url``'s scheme; ``file://`` copies a local mirror's file."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return pooch.HTTPDownloader(
            timeout=DOWNLOAD_TIMEOUT_S, progressbar=False, chunk_size=_CHUNK
        )
    if scheme == "ftp":
        return pooch.FTPDownloader(timeout=DOWNLOAD_TIMEOUT_S, progressbar=False, chunk_size=_CHUNK)
    if scheme == "file":
        return _copy_local
    raise DataError(f"unsupported URL scheme {scheme!r}; use http://, https://, ftp:// or file://")


def _copy_local(url: str, output_file: str, _pooch: object) -> None:
    # $PYRO_VAE_MIRROR=file:///shared/datasets/ worked before downloads went through pooch,
    # which has no downloader for file:// URLs
    source = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
    shutil.copyfile(source, output_file)


@contextlib.contextmanager
def _quiet_pooch() -> Iterator[None]:
    # pooch's logger prints its own "Downloading data from ..." line to stderr, outside the
    # logging hierarchy; ours above says the same through logging, so keep only its warnings
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


_POOCH_MISMATCH = re.compile(r"expected (\w+):(\w+) but got (\w+)")


def _why(error: Exception) -> str:
    """One line on why a download failed, for the list of URLs tried."""
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} {error.response.reason}"
    if isinstance(error, requests.ConnectionError) and error.args:
        # the innermost reason (refused, no such host) without urllib3's retry wrapper
        reason = getattr(error.args[0], "reason", None) or error
        return f"{type(error).__name__}: {reason}"
    if isinstance(error, DataError):
        return str(error)
    mismatch = _POOCH_MISMATCH.search(str(error))
    if isinstance(error, ValueError) and mismatch:  # pooch's checksum check; it deleted the file
        algorithm, expected, actual = mismatch.groups()
        return f"checksum mismatch, expected {algorithm} {expected}, got {actual}"
    # timeouts, resets, short reads, malformed URLs, a full disk, a missing local file
    return f"{type(error).__name__}: {error}"
