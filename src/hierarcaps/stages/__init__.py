"""The build stages, in order. Each is a `hierarcaps.stage.Stage` subclass."""
