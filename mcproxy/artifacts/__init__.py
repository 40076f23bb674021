"""Files that tools produce, kept per user and handed to the client as MCP resources.

A tool's ``filePath`` names a file on *the proxy's* disk, which in a shared proxy is a
multi-tenant hole (see docs/architecture.rst). So the path is only a name inside the
caller's own directory, ``<data_dir>/artifacts/<hash of user id>/files/``; the file is
listed by ``resources/list`` and read by ``resources/read`` as ``mcproxy://artifacts/<id>``,
for its owner only, until ``artifacts.ttl`` passes.

`names` checks the names clients give; `artifact` is the record of one saved file;
`disk` opens, writes and removes files without following symlinks; `store` keeps the
files of this process, their quotas and expiry; `index` says which artifacts a user has
(the store's own, or a cluster's: `mcproxy.interfaces.IArtifactIndex`); `resources` is the
MCP view of it.
"""
