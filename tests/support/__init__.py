"""Helpers shared by the test packages: real servers on loopback ports, never mocks of our code."""
