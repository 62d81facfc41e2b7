"""Bridges from fdcore to other engines (Ray Data); each imports its engine only when used."""
