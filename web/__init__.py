"""web: the browser client's files (HTML, JavaScript modules, CSS), served by the chat node.

Plain files, no build step; this marker only makes them package data, so that a wheel
install carries them and the node finds them with ``importlib.resources``.
"""
