"""Model handlers: script (any user script), deepaas, darknet. See conveyor.handler for the interface."""
