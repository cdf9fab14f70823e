"""Placement and executor agents. Built in the live-pipeline work."""
