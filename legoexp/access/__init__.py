"""Who may do what on a tracking server with MLflow's basic-auth.

``rights``: the roles legoexp's jobs need, the checks commands make before they create anything,
and a server's refusals worded as one line. ``admin``: ``python -m legoexp.access init|grant``,
which sets up the users and their rights.
"""
