"""Credits in the daemon: the ledger in the mirror, grants (plan, manual, purchase, Stripe), and its API."""
