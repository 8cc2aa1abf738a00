"""Unlearning methods: naive (the gold standard), SISA, Fisher forgetting and Influence (LiSSA)."""

from healing_pl.unlearning.methods import METHODS, Context, Method, unlearn_with_repeats

__all__ = ["METHODS", "Context", "Method", "unlearn_with_repeats"]
