"""conveyor-demo: a tiny DEEPaaS v2 model (see conveyor_demo_model.api)."""
