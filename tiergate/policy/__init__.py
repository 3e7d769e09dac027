"""Policy evaluation shared by both processes: the engine port, the bundle, the embedded Rego engine, the input and answer."""
