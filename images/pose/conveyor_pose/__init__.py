"""conveyor-pose: human body pose with MediaPipe Pose as a DEEPaaS v2 model (see .api)."""
