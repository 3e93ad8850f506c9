"""The `auxen` command line: server administration plus a REST client for people."""
