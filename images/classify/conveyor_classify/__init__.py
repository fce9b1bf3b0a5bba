"""conveyor-classify: ImageNet classification with EfficientNet-Lite0 as a DEEPaaS v2 model (see .api)."""
