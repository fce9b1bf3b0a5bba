"""conveyor-birds: bird sound classification with BirdNET as a DEEPaaS v2 model (see .api)."""
