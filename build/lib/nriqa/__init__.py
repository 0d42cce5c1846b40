"""nriqa: no-reference image quality assessment, from data to a served model.

Importing nriqa configures nothing. Entry points (the stages, the command line, the service)
call `nriqa.core.runtime.configure()` first; a program that uses nriqa as a library does too.
"""

__version__ = "0.1.0"
