"""The scripted walk-through behind `make demo`."""
