"""Real auth services, run as processes by the gateway tests."""
