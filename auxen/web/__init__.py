"""Pages for people: sign up, sign in, account (and, later, consent and the dashboard)."""
