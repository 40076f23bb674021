"""``python -m mcproxy.tunnel``: the same as the ``mcproxy-connect`` console script."""

from mcproxy.tunnel.client import main

main()
