"""CRM connectors: vendor records (CSV exports, later webhooks) -> contract-v2 events (DESIGN 8)."""
