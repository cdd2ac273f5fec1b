"""Who may do what on a tracking server with MLflow's basic-auth.

``rules``: MLflow's permission levels, the roles legoexp grants, what each request needs, the
login and the server, and a server's refusal worded as one line. ``rights``: a login's rights
resolved as the server resolves them, and the checks commands make before they create anything.
``admin``: ``python -m legoexp.access init|grant``, which sets up the users and their rights.
"""
