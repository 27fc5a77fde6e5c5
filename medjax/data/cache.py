"""Preprocessed datasets cached on disk as TFDS array_record files (no TensorFlow needed), read by grain.

A source (MedMNIST npz, Decathlon NIfTI folder, image folder, ...) is converted once: its examples go through
the source's preprocessing and are written by a TFDS `GeneratorBasedBuilder` into
`<cache_dir>/<name>/<fingerprint>/`. The fingerprint hashes everything the result depends on (source, input file
names, sizes and modification times, preprocessing parameters), so a second run with the same inputs reuses the
files and a changed input or parameter builds a new cache instead of reading a stale one. Inputs are only read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from medjax.errors import MedjaxError

FeatureSpec = Mapping[str, tuple[tuple[int | None, ...], Any]]  # name -> (shape with None for varying dims, dtype)


def default_cache_dir() -> str:
    """`$MEDJAX_CACHE_DIR`, else `~/.cache/medjax`."""
    return os.environ.get("MEDJAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "medjax")


def file_fingerprint(paths: Iterable[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each input file: cheap, and changes whenever a file is replaced or edited."""
    out = []
    for p in sorted(paths):
        st = os.stat(p)
        out.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
    return out


def fingerprint(spec: Any) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _builder_class(features: FeatureSpec, generators: Mapping[str, Callable[[], Iterable[dict]]]):
    import tensorflow_datasets as tfds

    def feature(shape, dtype):
        return tfds.features.Tensor(shape=tuple(shape), dtype=np.dtype(dtype),
                                    encoding=tfds.features.Encoding.ZLIB)

    class MedjaxCache(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """One split per generator; examples keyed by their position so the stored order is deterministic."""

        name = "medjax_cache"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, disable_shuffling=True,  # keep the source's order
                                         features=tfds.features.FeaturesDict(
                                             {k: feature(shape, dtype) for k, (shape, dtype) in features.items()}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in generators}

        def _generate_examples(self, split):
            for i, example in enumerate(generators[split]()):
                yield f"{i:09d}", {k: np.asarray(example[k], dtype=features[k][1]) for k in features}

    return MedjaxCache


def build_or_load(name: str, spec: Any, features: FeatureSpec,
                  generators: Mapping[str, Callable[[], Iterable[dict]]], cache_dir: str | None = None) -> dict:
    """Random-access sources `{split: source}` (`len(source)`, `source[i] -> dict of numpy arrays`), building the
    array_record cache the first time. Returns sources backed by files under the cache directory."""
    import tensorflow_datasets as tfds

    root = os.path.join(cache_dir or default_cache_dir(), name, fingerprint(spec))
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise MedjaxError(f"cannot create the dataset cache {root}: {e}") from e
    builder = _builder_class(features, generators)(data_dir=root, file_format="array_record")
    if not builder.is_prepared():
        tfds.disable_progress_bar()
        with open(os.path.join(root, "spec.json"), "w") as f:
            json.dump(spec, f, indent=1, sort_keys=True, default=str)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
    return dict(builder.as_data_source())


def arrays_generator(arrays: Mapping[str, np.ndarray]) -> Callable[[], Iterable[dict]]:
    """A generator over the rows of equally long arrays (for sources that are arrays already)."""
    def gen():
        n = len(next(iter(arrays.values())))
        for i in range(n):
            yield {k: v[i] for k, v in arrays.items()}
    return gen
