"""bmnas pipeline room: the `bmnas` CLI, run directories, training, reports, the demo."""

__version__ = "0.1.0"
