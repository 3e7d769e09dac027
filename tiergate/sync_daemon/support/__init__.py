"""Support: tenant lookup, decision lineage and the web console, served by the daemon."""
