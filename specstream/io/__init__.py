"""Shards, tar streaming, audio decoding, object storage. No Ray, no model code."""
