"""Local model backends (generator, editor, critic, judge) and the embedded ShapeWorld models."""
