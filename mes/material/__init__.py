"""Material definitions: what the plant receives, makes and ships."""
