"""Configs shipped with scenic-vivit; `scenic-vivit list-configs` lists them."""
