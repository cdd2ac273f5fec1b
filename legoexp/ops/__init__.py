"""Process plumbing that every command shares and no user sees.

``command``: how a command's ``main`` runs and exits (one line and exit 2 for a user's error; SIGTERM
and Ctrl-C end it cleanly with 143 and 130). ``proc``: what ``/proc`` says of a process, and child
processes that die with their parent and leave its signals to it. ``resources``: a write that ran
out of room or was refused, found behind the error it caused and worded in one line, with
``filesystem`` (room left, read-only, rights) and ``logs`` (MLflow's own tracebacks of it dropped).
``faults``: named fault points where tests hold or kill a process. ``timings``: where a command's
wall time goes (the ``time_<part>_s`` metrics).
"""
