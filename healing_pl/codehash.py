"""The code version of a phase: a hash of the source files that compute it, part of every cache key.

A cached gold standard, unlearned model or SISA shard is only served to the code that made it: any
change to the modules that compute it changes the key, so a code change never serves a stale model.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import pkgutil


@functools.cache
def code_version(*modules: str) -> str:
    """A short sha256 of the source of ``modules`` (dotted names; a package means every module in it)."""
    names: set[str] = set()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ValueError(f"no module '{name}' to version.")
        names.add(name)
        if spec.submodule_search_locations:  # a package: all of its modules
            names.update(f"{name}.{m.name}" for m in pkgutil.iter_modules(spec.submodule_search_locations))
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode())
        with open(importlib.util.find_spec(name).origin, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


#: the modules behind a trained model: the classifier, its backbones and the data it is fed
MODEL_CODE = ("healing_pl.models.classifier", "healing_pl.models.backbones", "healing_pl.data.datamodule")
