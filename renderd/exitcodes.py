"""Exit statuses of every ``renderd-py`` process, defined once.

The command line turns errors into these (``renderd.cli.main``); the daemon,
its worker pool and the worker processes return them. A process that cannot
even start says so with a status of its own, so whatever supervises it (the
daemon's pool, the systemd unit's ``RestartPreventExitStatus=2 3``) stops
instead of restarting it in a loop.
"""

#: Success. Also a daemon or worker pool that was asked to stop and did.
EXIT_OK = 0

#: A runtime failure, one line on stderr: a ``RenderdError`` that is not a
#: usage error (the daemon is gone, a store cannot be written, more
#: metatiles failed than ``--max-failures``), or a bug (``--debug`` shows it).
EXIT_FAILURE = 1

#: Bad input, one line on stderr: arguments, an area or expiry file, a
#: configuration that does not load (``UsageError``, ``ConfigError``). A
#: worker process whose configuration does not load exits with it too, and
#: its pool stops.
EXIT_USAGE = 2

#: A worker could not load a style (``StyleError`` at its start): the pool
#: stops start-up with a clear message instead of restarting workers that
#: would fail the same way; the daemon and ``renderd-py worker`` then exit
#: with it as well.
EXIT_STYLE = 3

#: Interrupted: Ctrl-C, or a seed stopped part way (it continues when run
#: again). 128 + SIGINT, as a shell reports a process that SIGINT ended.
EXIT_INTERRUPTED = 130

#: The statuses of a worker process that could not start: not restarted.
BOOT_FAILURES = frozenset({EXIT_USAGE, EXIT_STYLE})
