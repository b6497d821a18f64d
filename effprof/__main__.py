from effprof.cli.main import entry

entry()
