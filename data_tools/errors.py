"""The one exception type data_tools raises for bad input or bad options."""


class DataToolsError(Exception):
    """A problem with an input file or an option, reported as one line.

    `path` and `line` (both optional) say where; str() gives
    "<path>:<line>: <message>" so the CLI can print it after "error: ".
    """

    def __init__(self, message, path=None, line=None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line

    def __reduce__(self):  # keep path and line when sent back from a worker process
        return (type(self), (self.message, self.path, self.line))

    def __str__(self):
        where = ""
        if self.path is not None:
            where = self.path + (f":{self.line}" if self.line else "") + ": "
        # Keep the report on one line whatever the underlying message holds.
        return where + " ".join(self.message.split())
