"""What runs processes: the children Orisun starts and supervises, and the files they need.

- ``process``: a supervised child process (own process group, PDEATHSIG, restart budget, clean
  stop), shared by the two launchers below;
- ``postgres``: the embedded PostgreSQL (initdb on first start, ``postgres`` as a child, as
  ``nobody`` when Orisun runs as root);
- ``nats_server``: the embedded ``nats-server`` (JetStream) as a child, and client connections to it;
- ``bundle``: the executable's bundled binaries, unpacked once per build into the data dir, and
  the one-file bootloader it follows;
- ``cachedir``: folders filled once per version in the data dir (those binaries; the PostgreSQL
  tree copied for ``nobody``).

These sat among data access (``storage``) and messaging (``messaging``), but starting and
stopping programs is neither: the storage and messaging layers only connect to a server that is
already listening, wherever it runs (embedded, external, another node). So ``runtime`` is used
by ``app.py`` and ``cli.py`` (and the tests and benchmarks that start their own children), it
imports nothing of Orisun but ``errors``, and nothing below ``app.py`` imports it.
"""
