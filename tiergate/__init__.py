"""tiergate: Stripe billing turned into fast, local allow/deny answers."""

__version__ = "0.4.0"
