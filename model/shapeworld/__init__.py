"""The embedded ShapeWorld models: trained from scratch here, shipped with the package."""
