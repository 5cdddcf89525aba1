"""hapair: high-availability manager for a pair of LVS directors."""

__version__ = "0.1.0"
