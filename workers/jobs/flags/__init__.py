"""Serving backends' flag tables as data (one JSON file per backend), shipped in the ML image.

serve.py reads them to take a launcher's own command line; the console's backends read the same files through
importlib.resources (deployments/backends/flags.py), so neither side imports the other.
"""
