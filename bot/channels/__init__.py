"""Channels turn platform I/O into neutral messages and render neutral replies for their platform."""
