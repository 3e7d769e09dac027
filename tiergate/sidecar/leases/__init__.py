"""The sidecar's side of quota leases: decide inside a slice the daemon granted (docs/adr/0045)."""
