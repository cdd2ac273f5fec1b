"""Process plumbing that every command shares and no user sees.

``command``: how a command's ``main`` runs and exits (one line and exit 2 for a user's error).
``proc``: what ``/proc`` says of a process (its start time), and a child process that dies with
its parent. ``faults``: named fault points where tests hold or kill a process. ``timings``: where
a command's wall time goes (the ``time_<part>_s`` metrics).
"""
