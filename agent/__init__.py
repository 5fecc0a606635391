"""The reflection loop: LangGraph graph, session runner, trajectory store, CLI and viewer."""
