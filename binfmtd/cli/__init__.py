"""The command line: `boot` parses the boot path's commands without typer (apply, daemon, the
JSON queries), `app` is the full typer CLI, `render` turns reports into text or JSON and exit
codes, in one place."""
