"""Performance traces: reading Chrome's trace stream and computing insights from it, in Python."""
