"""Who is calling: API keys (and later OAuth, users, sessions), scopes and roles."""
