"""The daemon as the quota lease authority for `enforcement: leased` metrics (docs/adr/0045)."""
