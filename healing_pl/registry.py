"""Registries of the method families: unlearning methods, adversaries (selectors) and twin metrics.

A family is a base class; each member is a subclass in a file of its own whose constructor arguments
are its knobs (typed, documented in its docstring), registered with the family's decorator::

    @UNLEARNERS.register
    class Fisher(StochasticUnlearner):
        name = "fisher"           # the key of records, caches and reports
        label = "Fisher"          # what tables print
        def __init__(self, alpha: float = 1e-6, **kwargs): ...

The CLI offers the members the way LightningCLI offers optimizers (``--unlearn Fisher
--unlearn.alpha 3.5e-3``, ``--unlearn.help Fisher``): the parameter is typed with the base class and
jsonargparse lists its subclasses. Only registered classes run: the base class's constructor refuses a
subclass that was not registered (:meth:`Registry.check`). Labels, compared setups and controls come
from here, never from a string matched elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Registered classes of one family, by ``name`` (their record key) and by class name (their CLI name)."""

    def __init__(self, family: str, option: str):
        self.family = family  # e.g. "unlearning method"
        self.option = option  # e.g. "--unlearn"
        self._by_name: dict[str, T] = {}

    def register(self, cls: T) -> T:
        """Class decorator: add ``cls`` under its ``name`` (a class attribute)."""
        name = cls.__dict__.get("name")
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__qualname__} needs a class attribute 'name' to be registered as a {self.family}.")
        known = self._by_name.get(name)
        if known is not None and known is not cls and known.__qualname__ != cls.__qualname__:
            raise TypeError(f"{self.family} '{name}' is registered twice ({known.__qualname__}, {cls.__qualname__}).")
        self._by_name[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for a test that registers a member of its own)."""
        self._by_name.pop(name, None)

    def __getitem__(self, name: str) -> T:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.family} '{name}'; choose one of {', '.join(self.class_names())}."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def names(self) -> list[str]:
        """Record keys, in registration order."""
        return list(self._by_name)

    def classes(self) -> list[T]:
        return list(self._by_name.values())

    def class_names(self) -> list[str]:
        """What the CLI accepts after ``option``."""
        return [cls.__name__ for cls in self._by_name.values()]

    def by_class_name(self, class_name: str) -> T:
        """The registered class named ``class_name`` (its CLI name, or a dotted path ending in it)."""
        short = class_name.rsplit(".", 1)[-1]
        for cls in self._by_name.values():
            if cls.__name__ == short:  # class names are unique within a family (the CLI lists them short)
                return cls
        raise ValueError(
            f"unknown {self.family} '{class_name}'; choose one of {', '.join(self.class_names())} ({self.option})."
        )

    def check(self, instance: object) -> None:
        """Stop when ``instance`` is of a class that was not registered (a config may not run other code)."""
        cls = type(instance)
        registered = self._by_name.get(getattr(cls, "name", None))
        if (
            registered is not None
            and cls.__name__ == f"LazyInstance_{registered.__name__}"
            and registered in cls.__mro__
        ):
            return  # a default the CLI builds on first use (jsonargparse's lazy_instance of a registered class)
        if registered is not cls:
            raise ValueError(
                f"{cls.__module__}.{cls.__qualname__} is not a registered {self.family}; "
                f"choose one of {', '.join(self.class_names())} ({self.option})."
            )


def knob_names(cls: type) -> list[str]:
    """The constructor arguments of ``cls`` and of every base it forwards ``**kwargs`` to, in that order."""
    import inspect

    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in klass.__dict__ or klass is object or klass.__module__.startswith("jsonargparse"):
            continue  # (a lazy_instance wrapper's own constructor is not a knob)
        for p in inspect.signature(klass.__dict__["__init__"]).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names:
                names.append(p.name)
    return names


class Knobs:
    """A family member's knobs: its constructor arguments (over the bases it forwards to) and their values."""

    @classmethod
    def knob_names(cls) -> list[str]:
        return knob_names(cls)

    def knobs(self) -> dict:
        """Every knob and its value."""
        return {k: getattr(self, k) for k in self.knob_names()}


def import_members(package: str, path) -> None:
    """Import every module of ``package`` (its ``__path__``) that is not imported yet, so that a member in a new
    file registers itself: adding a method, an adversary or a twin metric is that one file. The built-in members
    are imported by name before this (their order is the registry's order, the order help texts and tables
    use); a new one comes after them."""
    import importlib
    import pkgutil
    import sys

    for module in pkgutil.iter_modules(path):
        name = f"{package}.{module.name}"
        if name not in sys.modules and not module.name.startswith("_"):
            importlib.import_module(name)
