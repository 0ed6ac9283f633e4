"""Turning text into commands, deciding who may run them, and running them."""
