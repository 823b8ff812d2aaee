"""Local multi-node test networks, scenarios and test data."""
