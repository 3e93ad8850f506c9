"""Money: the price catalog (more - metering, credits, caps - arrives with billing)."""
