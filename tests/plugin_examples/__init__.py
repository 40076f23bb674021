"""Example mcproxy plugins, one of each kind, for the test suite.

This package is a plugin package in Twisted's sense: pass it to `mcproxy.plugins.discover`
/ `load_plugins` as ``package`` (an installed plugin would instead ship a module in a
``twisted/plugins/`` directory). Every module here is scanned for plugin objects.
"""
