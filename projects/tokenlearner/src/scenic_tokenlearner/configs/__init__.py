"""Configs shipped with scenic-tokenlearner; `scenic-tokenlearner list-configs` lists them."""
