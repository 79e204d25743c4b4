"""Processing stages: event-model DocumentRouters that consume and emit documents."""
