"""Configs shipped with scenic-baselines; `scenic-baselines list-configs` lists them."""
