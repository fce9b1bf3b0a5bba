"""Model handlers: script (any user script), deepaas, darknet. See handlers.base for the interface."""
