"""The application layer: the `mmpo` command line, above everything else in the package.

It composes the core (`mmpo.*`), the builders (`mmpo.builders`), the evaluators (`mmpo.eval`) and the demo
(`mmpo.demo`) the way a user's script would; nothing below it imports it (tests/test_layering.py).
"""
