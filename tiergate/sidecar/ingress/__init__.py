"""The ingress hook: the request a proxy asks about, its tenant, replays, and answers per protocol."""
