"""Shim so editable installs keep the Twisted plugin cache in one place."""

from setuptools import setup

setup()
