"""The commands: one module per command (or family).

Each module imports `app` (and `console`, `err_console`, the common option types) from `effprof.cli.app` and
decorates its functions with `@app.command(...)`; `effprof.cli.main` imports every module, so a new command is
one new file here and one name in that import. Keep module-level imports light (no torch): `effprof --help`
imports every command module.
"""
