"""Work masters, work orders and shop-floor execution."""
