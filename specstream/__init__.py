"""specstream: stream audio from WebDataset shards through Ray Data into distributed trainers."""
__version__ = "0.1.0"
