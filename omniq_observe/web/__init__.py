"""The web view of ``serve``: overview, failures and task pages, and their JSON API."""

from omniq_observe.web._state import WebState
from omniq_observe.web.app import WebView

__all__ = ["WebState", "WebView"]
