"""Adversaries and unlearn requests: selectors, membership check, ledger and request streams."""

from healing_pl.adversary.selectors import SELECTORS, AttackSurface, Selector, build_surface, select_forget_set

__all__ = ["SELECTORS", "AttackSurface", "Selector", "build_surface", "select_forget_set"]
