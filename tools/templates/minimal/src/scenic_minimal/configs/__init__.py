"""Configs shipped with scenic-minimal; `scenic-minimal list-configs` lists them."""
