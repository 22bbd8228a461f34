"""The assistant's tools: one ``Tool`` class each (``base``), gathered in a ``ToolRegistry`` (``registry``).

Built in: ``weather`` (OpenWeather), ``wikipedia`` (any MediaWiki), ``math`` (SymPy on a restricted grammar, in a
child process). Plugins add tools through the entry point group ``lmops.tools``.
"""
