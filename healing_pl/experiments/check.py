"""Check commands with the CLI's own parser, without instantiating or training anything.

``grid --dry_run``, every real grid (before its first baseline) and ``--export-sweep`` parse each
command with :class:`~healing_pl.cli.HealingCLI`'s parser and build the chosen method-family classes
(unlearning method, adversary, twin metric) and the config dataclasses of the parsed groups (their own
checks: ranges, knobs of the chosen class), so a misspelt option or a wrong value stops the grid with
one sentence before anything is trained or written.
"""

from __future__ import annotations

import warnings

from jsonargparse import ArgumentError

from healing_pl.cli import FAMILIES, HealingCLI, parse_families, parser_sentence
from healing_pl.phases.config import HealConfig, StreamConfig, Tracking, TwinsConfig

#: the config dataclass of each option group
GROUPS = {"twins": TwinsConfig, "heal": HealConfig, "stream": StreamConfig, "wandb": Tracking}


def _build_class(option: str, chosen):
    """The registered class a parsed ``{class_path, init_args}`` names, built with its knobs (None stays None)."""
    if chosen is None:
        return None
    init_args = chosen.get("init_args")
    knobs = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args or {})
    return FAMILIES[option].by_class_name(str(chosen["class_path"]))(**knobs)


class _Built(Exception):
    """Carries the parser out of HealingCLI's constructor, before it parses anything."""


class _ParserOnly(HealingCLI):
    def parse_arguments(self, parser, args) -> None:
        raise _Built(parser)


class CommandChecker:
    """``check(argv)``: None for a command the CLI accepts, else the one sentence that says why not."""

    def __init__(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                _ParserOnly(args=[])
            except _Built as built:
                self.parser = built.args[0]

    def parse(self, argv: list[str]):
        """The parsed config of ``argv``'s subcommand; raises ValueError with one sentence."""
        subcommand = argv[0] if argv else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = parse_families(self.parser, list(argv), HealingCLI.subcommands())
        except ArgumentError as err:
            raise ValueError(parser_sentence(str(err), subcommand)) from None
        except SystemExit:  # jsonargparse's own exit on a few errors (already printed)
            raise ValueError(f"the CLI refused the command 'healing-pl {' '.join(argv)}'.") from None
        sub = config[config.subcommand]
        for key in ("unlearn", "adversary"):
            if sub.get(key) is not None:
                try:
                    _build_class(key, sub[key])
                except (ValueError, TypeError) as err:
                    raise ValueError(f"{key}: {err}".rstrip(".") + ".") from None
        for key, cls in GROUPS.items():
            group = sub.get(key)
            if group is None or not hasattr(group, "as_dict"):
                continue
            try:
                values = group.as_dict()
                if key == "twins":
                    values["metric"] = _build_class("twins.metric", group.get("metric"))
                cls(**values)
            except (ValueError, TypeError) as err:
                raise ValueError(f"{key}: {err}".rstrip(".") + ".") from None
        return sub

    def check(self, argv: list[str]) -> str | None:
        try:
            self.parse(argv)
        except ValueError as err:
            return str(err)
        return None
