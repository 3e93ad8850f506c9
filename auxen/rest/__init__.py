"""The REST API: thin HTTP adapters over `auxen.tools`."""
