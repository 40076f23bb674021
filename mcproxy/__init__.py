"""mcproxy: one shared MCP server; each user's assistant drives that user's own Chrome."""

__version__ = "0.1.0"
