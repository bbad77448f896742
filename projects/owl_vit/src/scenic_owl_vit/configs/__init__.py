"""Configs shipped with scenic-owl-vit; `scenic-owl-vit list-configs` lists them."""
