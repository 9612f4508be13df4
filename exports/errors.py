"""The one exception type the export CLI turns into a message instead of a traceback."""


class ExportError(Exception):
    """A request the exporter cannot honour, with what to do instead."""
