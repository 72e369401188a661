"""The one base class of errors that mean bad input or state (unknown task, unreadable checkpoint,
unusable corpus, ...): the CLI prints its message and exits with status 2, the API answers 4xx with it,
a job records it as its error without a traceback."""


class UserError(ValueError):
    pass
