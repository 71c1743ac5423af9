"""Flower's PyTorch quickstart with data attribution on the server."""
