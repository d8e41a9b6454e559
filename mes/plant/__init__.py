"""Loading the plant model (equipment classes, materials, equipment tree) from YAML."""
